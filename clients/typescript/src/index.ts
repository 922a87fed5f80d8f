/**
 * @quorum-kv/client: a TypeScript client for quorum-kv, with no runtime dependencies.
 *
 * Invariants: every call has an overall deadline and every request a timeout; every
 * write carries one client-session write number (or the caller's idempotency key) on
 * every attempt, so a retried write is applied at most once; only connection errors,
 * 503 and 504 are retried, and a write that may have applied but could not be confirmed
 * is an OutcomeUnknownError, never a silent success or a second application.
 */

export { KvClient, Listing, LOCAL_CLUSTER, type ClientOptions } from "./client.js";
export {
  ForbiddenError,
  IdempotencyKeyReusedError,
  InternalError,
  InvalidRequestError,
  KeyExistsError,
  KvError,
  LimitError,
  NotFoundError,
  OutcomeUnknownError,
  RevisionMismatchError,
  SERVER_ERROR_CODES,
  StorageFullError,
  UnauthenticatedError,
  UnavailableError,
  type ClientErrorCode,
  type KvErrorCode,
  type ServerErrorCode,
} from "./errors.js";
export { DEFAULT_POLICY, type RetryEvent, type RetryPolicy } from "./retry.js";
export type {
  CallOptions,
  Consistency,
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
