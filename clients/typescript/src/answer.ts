// Decoding answers: a success body into this client's types, a refusal into its typed
// error. API v1 writes snake_case; this client's types are camelCase.

import {
  ForbiddenError,
  IdempotencyKeyReusedError,
  InternalError,
  InvalidRequestError,
  KeyExistsError,
  KvError,
  LimitError,
  NotFoundError,
  RevisionMismatchError,
  StorageFullError,
  UnauthenticatedError,
} from "./errors.js";
import type { Entry, EntryMeta } from "./types.js";

/** The class of a final failure answer with `code` and `status`. */
function classFor(code: string, status: number): new (message: string, code: string, status: number) => KvError {
  switch (code) {
    case "unauthenticated":
      return UnauthenticatedError;
    case "forbidden":
      return ForbiddenError;
    case "key_not_found":
      return NotFoundError;
    case "value_too_large":
    case "uri_too_long":
    case "headers_too_large":
      return LimitError;
    case "idempotency_key_reused":
      return IdempotencyKeyReusedError;
    case "internal":
      return InternalError;
  }
  if (status === 507) return StorageFullError;
  if (status >= 400 && status < 500) return InvalidRequestError;
  return KvError;
}

/** The typed error of a final answer that is not a success. */
export function refusal(status: number, body: Buffer): KvError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    parsed = undefined;
  }
  const error = isObject(parsed) && isObject(parsed.error) ? parsed.error : undefined;
  if (!error || typeof error.code !== "string" || typeof error.message !== "string") {
    const text = body.toString("utf8").slice(0, 200);
    return new KvError(`answer ${status} is not an API v1 error: ${JSON.stringify(text)}`, "invalid_answer", status);
  }
  const { code, message } = error;
  if (status === 412 && isObject(parsed) && (code === "key_exists" || code === "revision_mismatch")) {
    const current = parsed.current === null || parsed.current === undefined ? null : decodeEntry<unknown>(parsed.current);
    return code === "key_exists" ? new KeyExistsError(message, current) : new RevisionMismatchError(message, current);
  }
  const Class = classFor(code, status);
  return new Class(message, code, status);
}

/** A plain JSON object. */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** An answer that does not have the shape API v1 gives it. */
export function invalid(what: string, v: unknown): KvError {
  return new KvError(`${what} in the answer is not what API v1 sends: ${JSON.stringify(v)?.slice(0, 200)}`, "invalid_answer", undefined);
}

/** Field `name` of `o` as a non-negative whole number. */
export function whole(o: Record<string, unknown>, name: string): number {
  const v = o[name];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw invalid(name, v);
  return v;
}

/** Field `name` of `o` as a whole number or null. */
export function wholeOrNull(o: Record<string, unknown>, name: string): number | null {
  return o[name] === null || o[name] === undefined ? null : whole(o, name);
}

/** Field `name` of `o` as a string. */
export function text(o: Record<string, unknown>, name: string): string {
  const v = o[name];
  if (typeof v !== "string") throw invalid(name, v);
  return v;
}

/** An entry as the server writes it, in this client's names. */
export function decodeEntry<T>(v: unknown): Entry<T> {
  if (!isObject(v) || !("value" in v)) throw invalid("an entry", v);
  // The caller's type parameter is a claim about what it stored; JSON cannot check it.
  const { key, ...meta } = decodeMeta(v);
  return { key, value: v.value as T, ...meta };
}

/** A key's metadata as the server writes it (a write's answer, a keys-only item). */
export function decodeMeta(v: unknown): EntryMeta {
  if (!isObject(v)) throw invalid("an entry", v);
  return {
    key: text(v, "key"),
    revision: whole(v, "revision"),
    createRevision: whole(v, "create_revision"),
    version: whole(v, "version"),
    expiresAtMs: wholeOrNull(v, "expires_at_ms"),
    ttlMs: wholeOrNull(v, "ttl_ms"),
  };
}

/** The JSON object of a success answer with one of `statuses`, else its typed error. */
export function success(answer: { status: number; body: Buffer }, ...statuses: number[]): Record<string, unknown> {
  if (!statuses.includes(answer.status)) throw refusal(answer.status, answer.body);
  let parsed: unknown;
  try {
    parsed = JSON.parse(answer.body.toString("utf8"));
  } catch (e) {
    throw new KvError(`answer ${answer.status} is not JSON`, "invalid_answer", answer.status, { cause: e });
  }
  if (!isObject(parsed)) throw invalid("the body", parsed);
  return parsed;
}

/** The error code of an answer's body, if it has one. */
export function codeOf(body: Buffer): string | undefined {
  try {
    const parsed: unknown = JSON.parse(body.toString("utf8"));
    if (isObject(parsed) && isObject(parsed.error) && typeof parsed.error.code === "string") return parsed.error.code;
  } catch {
    // Not JSON: no code.
  }
  return undefined;
}
