// KvClient: the calls of API v1 over one or more endpoints.

import { readFileSync } from "node:fs";

import { decodeEntry, decodeMeta, invalid, isObject, refusal, success, text, whole } from "./answer.js";
import { InvalidRequestError, KeyExistsError, RevisionMismatchError } from "./errors.js";
import { checkIdempotencyKey, keyPath, ttlQuery } from "./keys.js";
import { Caller, DEFAULT_POLICY, type Request, type RetryEvent, type RetryPolicy } from "./retry.js";
import { parseEndpoint, Transport, type Answer } from "./transport.js";
import type {
  CreatedToken,
  CreateOptions,
  CreateResult,
  DeleteIfResult,
  DeletePrefixResult,
  DeleteResult,
  Entry,
  EntryMeta,
  ListOptions,
  NewToken,
  ReadOptions,
  RevokeResult,
  SetOptions,
  SwapResult,
  TokenGrant,
  TokenInfo,
  WriteOptions,
  WriteResult,
} from "./types.js";

/** The local three-node cluster that `scripts/cluster.sh up` starts. */
export const LOCAL_CLUSTER = ["http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003"] as const;

/** How a client connects and retries. */
export interface ClientOptions extends Partial<RetryPolicy> {
  /** Node URLs such as `http://127.0.0.1:7001`: an array, or one comma-separated string.
   * Every call starts with the node that answered last and moves on when one fails. */
  endpoints: string | readonly string[];
  /** Sent as `Authorization: Bearer <token>` with every request, for clusters with auth. */
  token?: string | undefined;
  /** PEM certificates to trust for `https://` endpoints instead of the system's: the
   * cluster's CA. */
  ca?: string | Buffer | undefined;
  /** A client certificate (PEM) to present to nodes with `require_client_cert`. */
  cert?: string | Buffer | undefined;
  /** The client certificate's private key (PEM). */
  key?: string | Buffer | undefined;
  /** Called before each retry, for logging; what it throws is ignored. */
  onRetry?: ((event: RetryEvent) => void) | undefined;
}

/** A prefix listing: an async iterable of its items in key order, fetched a page at a time. */
export class Listing<E> implements AsyncIterable<E> {
  /** @internal */
  constructor(private readonly fetchPage: (after: string | undefined) => Promise<{ items: E[]; next: string | undefined }>) {}

  /** The pages, each one request; the listing ends after the page whose `next` is null. */
  async *pages(): AsyncGenerator<E[], void, undefined> {
    let after: string | undefined;
    do {
      const page = await this.fetchPage(after);
      yield page.items;
      after = page.next;
    } while (after !== undefined);
  }

  /** The items, page after page. */
  async *[Symbol.asyncIterator](): AsyncGenerator<E, void, undefined> {
    for await (const page of this.pages()) yield* page;
  }

  /** Every item, read page by page. */
  async toArray(): Promise<E[]> {
    const all: E[] = [];
    for await (const page of this.pages()) all.push(...page);
    return all;
  }
}

function encode(value: unknown): Buffer {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw new InvalidRequestError(`the value cannot be written as JSON: ${e instanceof Error ? e.message : String(e)}`, "invalid_json", undefined, { cause: e });
  }
  if (json === undefined) throw new InvalidRequestError("undefined, a function or a symbol is not a JSON value", "invalid_json", undefined);
  return Buffer.from(json, "utf8");
}

function positive(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isFinite(v) && v > 0)) {
    throw new InvalidRequestError(`${name} must be a positive number of milliseconds, got ${v}`, "invalid_option", undefined);
  }
}

/** The outcome of a conditional write's 412 `code`, or its typed error. */
function conflict<T>(answer: Answer, code: "key_exists" | "revision_mismatch"): Entry<T> | null {
  const error = refusal(answer.status, answer.body);
  const matches = code === "key_exists" ? error instanceof KeyExistsError : error instanceof RevisionMismatchError;
  if (!matches || !(error instanceof KeyExistsError || error instanceof RevisionMismatchError)) throw error;
  // The caller's type parameter is a claim about what the key holds; JSON cannot check it.
  return error.current as Entry<T> | null;
}

function decodeGrants(v: unknown): TokenGrant[] {
  if (!Array.isArray(v)) throw invalid("grants", v);
  return v.map((g: unknown) => {
    if (!isObject(g) || (g.access !== "read" && g.access !== "write")) throw invalid("a grant", g);
    return { prefix: text(g, "prefix"), access: g.access };
  });
}

function decodeToken(v: unknown): TokenInfo {
  if (!isObject(v) || typeof v.admin !== "boolean") throw invalid("a token", v);
  return { id: text(v, "id"), name: text(v, "name"), admin: v.admin, grants: decodeGrants(v.grants), createdMs: whole(v, "created_ms") };
}

/**
 * A client of a quorum-kv cluster.
 *
 * Reads (`get`, `getEntry`, `list`) are linearizable unless asked for `consistency:
 * "stale"`. Every call is retried on connection errors, 503 and 504, on the next endpoint,
 * with capped exponential backoff and jitter, until its deadline. Every write carries one
 * client-session write number (or the caller's `idempotencyKey`) on every attempt, so a
 * retried write is applied at most once and the retry gets the first answer. Other
 * answers, 4xx included, are final.
 */
export class KvClient {
  private readonly caller: Caller;
  private readonly transport: Transport;

  /** A client of the nodes at `options.endpoints`; it connects on its first call. Throws
   * InvalidRequestError for an endpoint that is not an http(s) URL or a bad option. */
  constructor(options: ClientOptions) {
    const list = typeof options.endpoints === "string" ? options.endpoints.split(",") : [...options.endpoints];
    const endpoints = list.map((e) => e.trim()).filter((e) => e.length > 0).map(parseEndpoint);
    if (endpoints.length === 0) throw new InvalidRequestError("no endpoints given", "invalid_endpoint", undefined);
    const policy: RetryPolicy = { ...DEFAULT_POLICY };
    for (const name of Object.keys(DEFAULT_POLICY) as (keyof RetryPolicy)[]) {
      const v = options[name];
      positive(name, v);
      if (v !== undefined) policy[name] = v;
    }
    const headers: Record<string, string> = {};
    if (options.token !== undefined) {
      // Checked here so a bad token fails at once, and without echoing the secret.
      if (!/^[\x21-\x7e]+$/.test(options.token)) throw new InvalidRequestError("the token is not visible ASCII", "invalid_token", undefined);
      headers.authorization = `Bearer ${options.token}`;
    }
    this.transport = new Transport({ ca: options.ca, cert: options.cert, key: options.key, idleTimeoutMs: policy.idleTimeoutMs });
    this.caller = new Caller(endpoints, this.transport, policy, headers, options.onRetry);
  }

  /**
   * A client configured from the environment, as kvctl is: `KV_ENDPOINTS` (comma-separated;
   * else the local cluster), `KV_TOKEN`, and the paths of PEM files in `KV_CACERT`,
   * `KV_CERT` and `KV_KEY`. `overrides` win.
   */
  static fromEnv(overrides: Partial<ClientOptions> = {}, env: NodeJS.ProcessEnv = process.env): KvClient {
    const file = (name: string) => {
      const path = env[name];
      return path ? readFileSync(path) : undefined;
    };
    const cert = file("KV_CERT");
    const key = file("KV_KEY");
    if ((cert === undefined) !== (key === undefined)) {
      throw new InvalidRequestError("set both KV_CERT and KV_KEY, or neither", "invalid_option", undefined);
    }
    return new KvClient({
      endpoints: env.KV_ENDPOINTS || [...LOCAL_CLUSTER],
      token: env.KV_TOKEN || undefined,
      ca: file("KV_CACERT"),
      cert,
      key,
      ...overrides,
    });
  }

  /** Reads `key`'s value; undefined when it is absent or expired (a stored `null` is null). */
  async get<T = unknown>(key: string, options?: ReadOptions): Promise<T | undefined> {
    return (await this.getEntry<T>(key, options))?.value;
  }

  /** Reads `key`'s value with its revision, version and expiry; undefined when absent. */
  async getEntry<T = unknown>(key: string, options?: ReadOptions): Promise<Entry<T> | undefined> {
    const query = options?.consistency === "stale" ? "?consistency=stale" : "";
    const answer = await this.read({ method: "GET", path: keyPath(key) + query }, options);
    if (answer.status === 404) {
      const error = refusal(answer.status, answer.body);
      if (error.code === "key_not_found") return undefined;
      throw error;
    }
    return decodeEntry<T>(success(answer, 200));
  }

  /** Writes `value` (any JSON) to `key`, replacing what was there. */
  async set<T>(key: string, value: T, options?: SetOptions): Promise<WriteResult> {
    const path = keyPath(key) + ttlQuery(options ?? {});
    const answer = await this.write({ method: "PUT", path, body: encode(value) }, options);
    return decodeMeta(success(answer, 200));
  }

  /**
   * Creates `key` only if it is absent (or expired). Of any number of concurrent creators
   * exactly one gets `{ created: true, revision, … }`; every other gets
   * `{ created: false, current }`, the entry that won. Losing is an outcome, not an error.
   */
  async create<T>(key: string, value: T, options?: CreateOptions): Promise<CreateResult<T>> {
    const path = keyPath(key) + ttlQuery({ ttlInSeconds: options?.ttlInSeconds });
    const answer = await this.write({ method: "PUT", path, body: encode(value), headers: { "if-none-match": "*" } }, options);
    if (answer.status === 412) return { created: false, current: conflict<T>(answer, "key_exists") };
    return { created: true, ...decodeMeta(success(answer, 201)) };
  }

  /**
   * Writes `value` only if `key` is at `revision` (compare-and-set); else returns
   * `{ swapped: false, current }` with the key's entry (null when absent). Like `set`,
   * without `ttlInSeconds` or `keepTtl` the key no longer expires.
   */
  async compareAndSet<T>(key: string, value: T, revision: number, options?: SetOptions): Promise<SwapResult<T>> {
    const path = keyPath(key) + ttlQuery(options ?? {});
    const headers = { "if-match": revisionTag(revision) };
    const answer = await this.write({ method: "PUT", path, body: encode(value), headers }, options);
    if (answer.status === 412) return { swapped: false, current: conflict<T>(answer, "revision_mismatch") };
    return { swapped: true, ...decodeMeta(success(answer, 200)) };
  }

  /** Deletes `key`; `deleted` says whether a live key was there (a missing key is no error). */
  async delete(key: string, options?: WriteOptions): Promise<DeleteResult> {
    const answer = await this.write({ method: "DELETE", path: keyPath(key) }, options);
    return decodeDeleted(success(answer, 200));
  }

  /** Deletes `key` only if it is at `revision`; else returns the key's entry (null when
   * absent). Releasing a lock: delete it only if it is still the one taken. */
  async deleteIf<T = unknown>(key: string, revision: number, options?: WriteOptions): Promise<DeleteIfResult<T>> {
    const headers = { "if-match": revisionTag(revision) };
    const answer = await this.write({ method: "DELETE", path: keyPath(key), headers }, options);
    if (answer.status === 412) return { deleted: false, current: conflict<T>(answer, "revision_mismatch") };
    const { revision: at } = decodeDeleted(success(answer, 200));
    return { deleted: true, revision: at };
  }

  /**
   * The live entries whose keys start with `prefix`, in key order, as an async iterable
   * (`for await (const entry of kv.list("users/"))`), fetched `pageSize` at a time;
   * `.pages()` iterates pages instead. Each page is one read, consistent on its own.
   */
  list<T = unknown>(prefix: string, options?: ListOptions): Listing<Entry<T>> {
    return new Listing(async (after) => {
      const page = await this.page(prefix, after, false, options);
      return { items: page.items.map((item) => decodeEntry<T>(item)), next: page.next };
    });
  }

  /** Like `list`, without the values: keys and metadata only. */
  listKeys(prefix: string, options?: ListOptions): Listing<EntryMeta> {
    return new Listing(async (after) => {
      const page = await this.page(prefix, after, true, options);
      return { items: page.items.map((item) => decodeMeta(item)), next: page.next };
    });
  }

  /**
   * Deletes every key starting with `prefix` (not empty) in one atomic step: from the
   * answer's revision on, no read sees any of them. Keys written later stay.
   */
  async deletePrefix(prefix: string, options?: WriteOptions): Promise<DeletePrefixResult> {
    const query = new URLSearchParams({ prefix });
    const answer = await this.write({ method: "DELETE", path: `/v1/kv?${query}` }, options);
    return { revision: whole(success(answer, 200), "revision") };
  }

  /**
   * Creates a token (an admin's call). Its secret, `token`, is in this answer only, so the
   * call is never repeated once an attempt may have applied: OutcomeUnknownError then
   * (list the tokens to see).
   */
  async createToken(spec: NewToken, options?: { deadlineMs?: number | undefined }): Promise<CreatedToken> {
    const body = encode({ name: spec.name, admin: spec.admin ?? false, grants: spec.grants });
    const answer = await this.caller.runOnce({ method: "POST", path: "/v1/tokens", body }, options?.deadlineMs);
    const created = success(answer, 201);
    const { createdMs: _zero, ...token } = decodeToken(created);
    return { ...token, token: text(created, "token"), revision: whole(created, "revision") };
  }

  /** Every token, without secrets (an admin's call). */
  async tokens(options?: ReadOptions): Promise<TokenInfo[]> {
    const answer = await this.read({ method: "GET", path: "/v1/tokens" }, options);
    const all = success(answer, 200).tokens;
    if (!Array.isArray(all)) throw invalid("tokens", all);
    return all.map(decodeToken);
  }

  /** Revokes token `id` (16 hex digits) on every node (an admin's call). */
  async revokeToken(id: string, options?: WriteOptions): Promise<RevokeResult> {
    if (!/^[0-9a-f]{16}$/.test(id)) throw new InvalidRequestError(`a token id is 16 hex digits, not ${JSON.stringify(id)}`, "invalid_token_request", undefined);
    const answer = await this.write({ method: "DELETE", path: `/v1/tokens/${id}` }, options);
    const body = success(answer, 200);
    if (typeof body.revoked !== "boolean") throw invalid("revoked", body.revoked);
    return { revoked: body.revoked, revision: whole(body, "revision") };
  }

  /** The cluster's status as the answering node sees it: `GET /v1/cluster` as is. */
  async cluster(options?: ReadOptions): Promise<Record<string, unknown>> {
    return success(await this.read({ method: "GET", path: "/v1/cluster" }, options), 200);
  }

  /** Closes the kept connections. Idle ones never hold the process open, so this is only
   * for tidiness in tests and short scripts. */
  close(): void {
    this.transport.close();
  }

  /** How many client sessions this client has open (each numbers up to 256 writes in flight). */
  get openSessions(): number {
    return this.caller.openSessions;
  }

  private read(request: Request, options: ReadOptions | undefined): Promise<Answer> {
    return this.caller.run(request, false, options?.deadlineMs);
  }

  private write(request: Request, options: WriteOptions | undefined): Promise<Answer> {
    const key = options?.idempotencyKey;
    if (key === undefined) return this.caller.run(request, true, options?.deadlineMs);
    checkIdempotencyKey(key);
    return this.caller.run({ ...request, headers: { ...request.headers, "idempotency-key": key } }, true, options?.deadlineMs);
  }

  private async page(
    prefix: string,
    after: string | undefined,
    keysOnly: boolean,
    options: ListOptions | undefined,
  ): Promise<{ items: unknown[]; next: string | undefined }> {
    const query = new URLSearchParams({ prefix, limit: String(options?.pageSize ?? 100) });
    if (after !== undefined) query.set("after", after);
    if (keysOnly) query.set("keys_only", "true");
    if (options?.consistency === "stale") query.set("consistency", "stale");
    const body = success(await this.read({ method: "GET", path: `/v1/kv?${query}` }, options), 200);
    if (!Array.isArray(body.items)) throw invalid("items", body.items);
    if (body.next !== null && typeof body.next !== "string") throw invalid("next", body.next);
    return { items: body.items, next: body.next ?? undefined };
  }
}

/** The If-Match value of `revision`. */
function revisionTag(revision: number): string {
  if (!Number.isSafeInteger(revision) || revision < 0) {
    throw new InvalidRequestError(`a revision is a whole number, got ${revision}`, "invalid_precondition", undefined);
  }
  return `"${revision}"`;
}

function decodeDeleted(body: Record<string, unknown>): DeleteResult {
  if (typeof body.deleted !== "boolean") throw invalid("deleted", body.deleted);
  return { deleted: body.deleted, revision: whole(body, "revision") };
}
