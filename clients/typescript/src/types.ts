// What calls take and return.

/** A key's metadata, as a write or a keys-only listing reports it. */
export interface EntryMeta {
  key: string;
  /** Log index of the key's last change: what `compareAndSet` and `deleteIf` take, and a
   * fencing token (it only grows, and no two changes of a key share one). */
  revision: number;
  /** Log index of the write that created the key (it changes when the key is recreated). */
  createRevision: number;
  /** Writes since the key was created, from 1. */
  version: number;
  /** When the key expires, in milliseconds since the epoch; null if it never does. */
  expiresAtMs: number | null;
  /** Milliseconds left when the server answered; null if the key never expires. */
  ttlMs: number | null;
}

/** A key's value and metadata. */
export interface Entry<T> extends EntryMeta {
  value: T;
}

/** What a successful `set`, `create` or `compareAndSet` wrote. */
export type WriteResult = EntryMeta;

/** What a `delete` reported. */
export interface DeleteResult {
  /** Whether a live key was there. */
  deleted: boolean;
  /** The delete's revision. */
  revision: number;
}

/** What a `deletePrefix` reported. */
export interface DeletePrefixResult {
  /** Every key under the prefix written before this revision is deleted. */
  revision: number;
}

/**
 * Outcome of `create`: this call created the key, or another writer had (`current` is
 * the entry that won; null only when a replayed answer finds the key gone since).
 */
export type CreateResult<T> = ({ created: true } & WriteResult) | { created: false; current: Entry<T> | null };

/** Outcome of `compareAndSet`: written, or the key's entry (null when it is absent). */
export type SwapResult<T> = ({ swapped: true } & WriteResult) | { swapped: false; current: Entry<T> | null };

/** Outcome of `deleteIf`: deleted at `revision`, or the key's entry (null when absent). */
export type DeleteIfResult<T> = { deleted: true; revision: number } | { deleted: false; current: Entry<T> | null };

/** How a read is served. */
export type Consistency =
  /** Confirmed by the leader: reflects every write acknowledged before the call. */
  | "linearizable"
  /** The contacted node's local copy: no leader round-trip, and it may lag. */
  | "stale";

/** Options every call takes. */
export interface CallOptions {
  /** Overall time this call may take, retries included; the client's `deadlineMs` else. */
  deadlineMs?: number | undefined;
}

/** Options of `get`, `getEntry`, `list` and `listKeys`. */
export interface ReadOptions extends CallOptions {
  /** "linearizable" (the default) or "stale". */
  consistency?: Consistency | undefined;
}

/** Options of every write. */
export interface WriteOptions extends CallOptions {
  /**
   * A key of the caller's (1 to 255 visible ASCII characters, such as a webhook delivery
   * id): the cluster applies the write at most once for 24 hours
   * (`limits.idempotency_retention_s`), whichever process or client sends it, and a
   * repeat gets the first answer. Without one, a call is applied at most once across its
   * own retries only.
   */
  idempotencyKey?: string | undefined;
}

/** Options of `set` and `compareAndSet`. */
export interface SetOptions extends WriteOptions {
  /** Expire this many seconds after the write (rounded up to whole seconds). Without it
   * or `keepTtl`, the key never expires, whatever TTL it had. */
  ttlInSeconds?: number | undefined;
  /** Keep the key's current expiry. */
  keepTtl?: boolean | undefined;
}

/** Options of `create`. */
export interface CreateOptions extends WriteOptions {
  /** Expire this many seconds after the write (rounded up to whole seconds). */
  ttlInSeconds?: number | undefined;
}

/** Options of `list` and `listKeys`. */
export interface ListOptions extends ReadOptions {
  /** Entries per request, 1 to 1000 (default 100); a page also ends before 4 MiB. */
  pageSize?: number | undefined;
}

/** What a token may do on the keys under `prefix`. */
export interface TokenGrant {
  /** A key prefix; "" is every key. */
  prefix: string;
  /** "write" includes reading. */
  access: "read" | "write";
}

/** A token to create. */
export interface NewToken {
  /** Who holds it, for people (1 to 128 bytes). */
  name: string;
  /** May manage tokens and read the cluster's state. */
  admin?: boolean | undefined;
  grants: TokenGrant[];
}

/** A token as the cluster lists it (never its secret). */
export interface TokenInfo {
  /** 16 hex digits. */
  id: string;
  name: string;
  admin: boolean;
  grants: TokenGrant[];
  createdMs: number;
}

/** A token just created, with its secret, which the cluster never shows again. (No
 * `createdMs`: the creation answer reports 0 there; `tokens()` has the time.) */
export interface CreatedToken extends Omit<TokenInfo, "createdMs"> {
  /** What clients send as `token`. */
  token: string;
  revision: number;
}

/** What a `revokeToken` reported. */
export interface RevokeResult {
  /** Whether the token existed. */
  revoked: boolean;
  revision: number;
}
