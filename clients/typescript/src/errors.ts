// How calls fail: the server's error codes, and the typed errors callers match on.

import type { Entry } from "./types.js";

/**
 * Every `error.code` an answer of API v1 can carry, with its HTTP status: the server's
 * `kv_core::ErrorCode` list, which README's error table documents (a test holds this
 * table to README's).
 */
export const SERVER_ERROR_CODES = {
  invalid_key: 400,
  invalid_ttl: 400,
  invalid_keep_ttl: 400,
  conflicting_ttl: 400,
  invalid_json: 400,
  invalid_query: 400,
  invalid_consistency: 400,
  invalid_limit: 400,
  invalid_prefix: 400,
  invalid_precondition: 400,
  conflicting_preconditions: 400,
  invalid_idempotency_key: 400,
  invalid_session: 400,
  invalid_token_request: 400,
  invalid_member_request: 400,
  unauthenticated: 401,
  forbidden: 403,
  key_not_found: 404,
  route_not_found: 404,
  node_not_found: 404,
  method_not_allowed: 405,
  request_timeout: 408,
  membership_change_in_progress: 409,
  node_id_used: 409,
  address_in_use: 409,
  not_caught_up: 409,
  membership_refused: 409,
  leader_not_moved: 409,
  key_exists: 412,
  revision_mismatch: 412,
  value_too_large: 413,
  uri_too_long: 414,
  unsupported_media_type: 415,
  idempotency_key_reused: 422,
  session_expired: 422,
  headers_too_large: 431,
  internal: 500,
  no_leader: 503,
  unavailable: 503,
  outcome_unknown: 504,
  insufficient_storage: 507,
  quota_exceeded: 507,
  records_full: 507,
  tokens_full: 507,
} as const;

/** A code the server answers with. */
export type ServerErrorCode = keyof typeof SERVER_ERROR_CODES;

/**
 * Codes of failures the client reports itself: the call gave up (`unavailable`,
 * `outcome_unknown`, which the server uses too), an answer was not what API v1 sends, or
 * the client's own options were refused.
 */
export type ClientErrorCode = "unavailable" | "outcome_unknown" | "invalid_answer" | "invalid_endpoint" | "invalid_option" | "invalid_token";

/** The code of a {@link KvError}; any other string is a code a newer server added. */
export type KvErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** Base of every error this client throws. */
export class KvError extends Error {
  override name = "KvError";
  /** The server's stable code (see README's error table), or one of the client's. */
  readonly code: KvErrorCode;
  /** The HTTP status of the answer; undefined when no answer decided the failure. */
  readonly status: number | undefined;

  constructor(message: string, code: KvErrorCode, status: number | undefined, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.status = status;
  }
}

/**
 * The request was refused as malformed (a bad key, TTL, prefix, query or header), by the
 * server (`status` 400, 404 `route_not_found`, 405, 408, 415) or by the client before
 * sending (`status` undefined). Never retried: the same request fails again.
 */
export class InvalidRequestError extends KvError {
  override name = "InvalidRequestError";
}

/** No valid bearer token came with the request (`401 unauthenticated`). */
export class UnauthenticatedError extends KvError {
  override name = "UnauthenticatedError";
}

/** The token does not grant this on this key, prefix or route (`403 forbidden`). */
export class ForbiddenError extends KvError {
  override name = "ForbiddenError";
}

/** The key is absent or expired (`404 key_not_found`); `get` answers undefined instead. */
export class NotFoundError extends KvError {
  override name = "NotFoundError";
}

/**
 * Create-if-absent found the key (`412 key_exists`). `create` returns this outcome as
 * `{ created: false, current }` rather than throwing it.
 */
export class KeyExistsError<T = unknown> extends KvError {
  override name = "KeyExistsError";
  /** The entry that was there: null only if a replayed answer found the key gone since. */
  readonly current: Entry<T> | null;

  constructor(message: string, current: Entry<T> | null) {
    super(message, "key_exists", 412);
    this.current = current;
  }
}

/**
 * The key is at another revision, or absent (`412 revision_mismatch`). `compareAndSet`
 * and `deleteIf` return this outcome as `{ swapped: false, current }` and
 * `{ deleted: false, current }` rather than throwing it.
 */
export class RevisionMismatchError<T = unknown> extends KvError {
  override name = "RevisionMismatchError";
  /** The key's entry, or null when it is absent. */
  readonly current: Entry<T> | null;

  constructor(message: string, current: Entry<T> | null) {
    super(message, "revision_mismatch", 412);
    this.current = current;
  }
}

/** The request is past a bound of the API: value (413), URL (414) or headers (431). */
export class LimitError extends KvError {
  override name = "LimitError";
}

/** The idempotency key came earlier with a different request (`422`); nothing applied. */
export class IdempotencyKeyReusedError extends KvError {
  override name = "IdempotencyKeyReusedError";
}

/**
 * The cluster is out of room for this write (`507`: `insufficient_storage`,
 * `quota_exceeded`, `records_full`, `tokens_full`); not applied, and writes resume once
 * deletes, expiry or an operator make room.
 */
export class StorageFullError extends KvError {
  override name = "StorageFullError";
}

/** A failure inside the node (`500 internal`); its log says which. Not retried. */
export class InternalError extends KvError {
  override name = "InternalError";
}

/**
 * No node could serve the call before its deadline (connection errors, `503`), and no
 * attempt may have applied it: safe to call again.
 */
export class UnavailableError extends KvError {
  override name = "UnavailableError";
  /** Attempts made. */
  readonly attempts: number;

  constructor(message: string, attempts: number, status: number | undefined, options?: { cause?: unknown }) {
    super(message, "unavailable", status, options);
    this.attempts = attempts;
  }
}

/**
 * A write may or may not have been applied, and the client could not find out before its
 * deadline (every attempt after one that may have applied failed too). Read the key to
 * see; calling again under the same `idempotencyKey` is safe for 24 hours.
 */
export class OutcomeUnknownError extends KvError {
  override name = "OutcomeUnknownError";
  /** Attempts made. */
  readonly attempts: number;

  constructor(message: string, attempts: number, status: number | undefined, options?: { cause?: unknown }) {
    super(message, "outcome_unknown", status, options);
    this.attempts = attempts;
  }
}
