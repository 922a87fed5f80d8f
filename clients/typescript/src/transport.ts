// One HTTP exchange with one node, over node:http or node:https. Not fetch: Node's fetch
// cannot be told which CA to trust or which client certificate to present without the
// undici package, and these agents can, with no dependency.

import * as http from "node:http";
import * as https from "node:https";

import { InvalidRequestError, KvError } from "./errors.js";

/** A node's client URL, parsed once. */
export interface Endpoint {
  /** As given, without a trailing slash: for messages. */
  url: string;
  tls: boolean;
  host: string;
  port: number;
}

/** Parses `http://host:port` or `https://host:port`. */
export function parseEndpoint(text: string): Endpoint {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    throw new InvalidRequestError(`endpoint ${JSON.stringify(text)} is not a URL such as http://127.0.0.1:7001`, "invalid_endpoint", undefined);
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || (url.pathname !== "/" && url.pathname !== "") || url.search) {
    throw new InvalidRequestError(`endpoint ${JSON.stringify(text)} must be http:// or https:// with no path`, "invalid_endpoint", undefined);
  }
  const tls = url.protocol === "https:";
  return {
    url: `${url.protocol}//${url.host}`,
    tls,
    // node:http wants an IPv6 address without its brackets.
    host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: url.port ? Number(url.port) : tls ? 443 : 80,
  };
}

/** A final answer: status and body. */
export interface Answer {
  status: number;
  body: Buffer;
  /** The node answered with what it recorded for an earlier attempt (`Idempotency-Replayed`). */
  replayed: boolean;
}

/** An exchange that failed without an answer. */
export class SendError extends Error {
  override name = "SendError";
  /** Whether the request may have reached the node: a connection was made. A failure to
   * connect (refused, unreachable, a TLS handshake refused) applied nothing. */
  readonly sent: boolean;

  constructor(message: string, sent: boolean, options?: { cause?: unknown }) {
    super(message, options);
    this.sent = sent;
  }
}

/**
 * The largest answer read: a list page holds at most 4 MiB of keys and values, but a key
 * escaped in JSON can grow sixfold, and an answer past this is not from a node of API v1.
 */
const MAX_ANSWER_BYTES = 64 << 20;

/** How a client's connections are made. */
export interface TransportOptions {
  /** PEM certificates to trust for https endpoints, instead of the system's. */
  ca?: string | Buffer | undefined;
  /** A client certificate (PEM) and its key, for nodes with `require_client_cert`. */
  cert?: string | Buffer | undefined;
  key?: string | Buffer | undefined;
  /** How long an idle connection is kept for reuse. */
  idleTimeoutMs: number;
}

/** The connections of one client, kept alive between calls. */
export class Transport {
  private readonly plain: http.Agent;
  private readonly secure: https.Agent;

  constructor(options: TransportOptions) {
    // `timeout` closes a kept connection idle that long: below the nodes' idle timeout
    // (30 s), so a connection is not reused just as the node closes it.
    this.plain = new http.Agent({ keepAlive: true, timeout: options.idleTimeoutMs });
    const tls: https.AgentOptions = { keepAlive: true, timeout: options.idleTimeoutMs };
    // With a CA given, only it is trusted: a certificate the system trusts is not the cluster's.
    if (options.ca !== undefined) tls.ca = options.ca;
    if (options.cert !== undefined) tls.cert = options.cert;
    if (options.key !== undefined) tls.key = options.key;
    this.secure = new https.Agent(tls);
  }

  /** Sends one request and reads the whole answer, within `timeoutMs`. */
  send(
    endpoint: Endpoint,
    method: string,
    path: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    timeoutMs: number,
  ): Promise<Answer> {
    return new Promise((resolve, reject) => {
      let sent = false;
      let settled = false;
      const finish = (outcome: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        outcome();
      };
      const fail = (message: string, cause: unknown, alwaysSent = false) =>
        finish(() => reject(new SendError(message, sent || alwaysSent, { cause })));
      const request = (endpoint.tls ? https : http).request({
        host: endpoint.host,
        port: endpoint.port,
        method,
        path,
        headers: { ...headers, "content-length": String(body?.length ?? 0) },
        agent: endpoint.tls ? this.secure : this.plain,
      });
      const timer = setTimeout(() => {
        const error = new Error(`no answer from ${endpoint.url} within ${Math.round(timeoutMs)} ms`);
        fail(error.message, error);
        request.destroy(error);
      }, timeoutMs);
      request.once("socket", (socket) => {
        // A kept-alive connection is already open; a new one has sent nothing until it
        // connects (and, with TLS, finishes its handshake). "socket" comes on the next
        // tick, before any I/O, so a new connection cannot have connected already.
        if (request.reusedSocket) {
          sent = true;
        } else {
          socket.once(endpoint.tls ? "secureConnect" : "connect", () => {
            sent = true;
          });
        }
      });
      request.once("response", (response) => {
        const chunks: Buffer[] = [];
        let size = 0;
        response.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) {
            const error = new KvError(`an answer from ${endpoint.url} is larger than ${MAX_ANSWER_BYTES} bytes`, "invalid_answer", response.statusCode);
            finish(() => reject(error));
            request.destroy(error);
            return;
          }
          chunks.push(chunk);
        });
        response.once("end", () => {
          const replayed = response.headers["idempotency-replayed"] === "true";
          finish(() => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks), replayed }));
        });
        response.once("error", (e) => fail(`the answer from ${endpoint.url} broke off: ${describe(e)}`, e, true));
        response.once("close", () => {
          if (!response.complete) fail(`the answer from ${endpoint.url} broke off`, undefined, true);
        });
      });
      request.once("error", (e) => fail(`${method} ${endpoint.url}: ${describe(e)}`, e));
      request.end(body);
    });
  }

  /** Closes every kept connection. */
  close(): void {
    this.plain.destroy();
    this.secure.destroy();
  }
}

/** A system error's code and message, as `ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:1`. */
function describe(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return typeof code === "string" && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
