// Checks on input made before sending, and how a key travels in a URL path: the same
// rules as kv_core::validate and kv_core::key_path.

import { InvalidRequestError } from "./errors.js";

/** The longest key, in bytes of UTF-8. */
export const MAX_KEY_BYTES = 4096;

function refused(code: string, message: string): InvalidRequestError {
  return new InvalidRequestError(message, code, undefined);
}

/**
 * The path `/v1/kv/{key}` of a checked key. Everything but unreserved characters and `/`
 * is escaped, so nothing on the way can make the path name another key; keys hold no `.`
 * or `..` part because proxies and URL parsers resolve those.
 */
export function keyPath(key: string): string {
  if (key.length === 0) throw refused("invalid_key", "the key is empty");
  let escaped: string;
  try {
    escaped = encodeURIComponent(key);
  } catch {
    throw refused("invalid_key", "the key is not valid UTF-16 (a lone surrogate), so it has no UTF-8 form");
  }
  const bytes = Buffer.byteLength(key, "utf8");
  if (bytes > MAX_KEY_BYTES) throw refused("invalid_key", `the key is ${bytes} bytes long; at most ${MAX_KEY_BYTES} are allowed`);
  if (key.split("/").some((part) => part === "." || part === "..")) {
    throw refused("invalid_key", "a key's /-separated parts may not be . or .. (HTTP clients and proxies resolve them)");
  }
  // encodeURIComponent leaves !'()* alone, which kv_core::key_path escapes.
  const path = escaped.replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).replace(/%2F/g, "/");
  return `/v1/kv/${path}`;
}

/** Checks an idempotency key: 1 to 255 visible ASCII characters. */
export function checkIdempotencyKey(key: string): void {
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw refused("invalid_idempotency_key", "an idempotency key is 1 to 255 visible ASCII characters");
  }
}

/** The `ttl` query value of `ttlInSeconds`: whole seconds, rounded up, so a TTL never
 * ends earlier than asked. */
export function ttlSeconds(ttlInSeconds: number): string {
  if (!Number.isFinite(ttlInSeconds) || ttlInSeconds <= 0) {
    throw refused("invalid_ttl", `ttlInSeconds must be a positive number of seconds, got ${ttlInSeconds}`);
  }
  return String(Math.ceil(ttlInSeconds));
}

/** The `?…` of a write's TTL options, or "". */
export function ttlQuery(options: { ttlInSeconds?: number | undefined; keepTtl?: boolean | undefined }): string {
  const query = new URLSearchParams();
  if (options.ttlInSeconds !== undefined) query.set("ttl", ttlSeconds(options.ttlInSeconds));
  if (options.keepTtl) query.set("keep_ttl", "true");
  const text = query.toString();
  return text ? `?${text}` : "";
}
