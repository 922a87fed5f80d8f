// Sending one logical call: endpoint rotation, retries with capped backoff and jitter, an
// overall deadline, and one session write number per logical write, as kv-client's
// `retry` module does.

import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

import { codeOf, success, text } from "./answer.js";
import { KvError, OutcomeUnknownError, UnavailableError } from "./errors.js";
import { Sessions, type Ticket } from "./session.js";
import { SendError, type Answer, type Endpoint, type Transport } from "./transport.js";

/** How long and how often a call is retried. */
export interface RetryPolicy {
  /** Overall time a call may take, retries included (30 s). */
  deadlineMs: number;
  /** Timeout of one HTTP request (7 s): above the server's write timeout (5 s), so a
   * slow commit is answered by the server rather than cut off here. */
  requestTimeoutMs: number;
  /** First backoff (50 ms); doubles after every failed attempt. */
  initialBackoffMs: number;
  /** Largest backoff (1 s). */
  maxBackoffMs: number;
  /** How long an idle connection is kept for reuse (10 s): below the nodes'
   * `limits.idle_timeout_ms` (30 s), after which a node closes it. */
  idleTimeoutMs: number;
}

/** The defaults, kv-client's. */
export const DEFAULT_POLICY: Readonly<RetryPolicy> = Object.freeze({
  deadlineMs: 30_000,
  requestTimeoutMs: 7_000,
  initialBackoffMs: 50,
  maxBackoffMs: 1_000,
  idleTimeoutMs: 10_000,
});

/** An attempt that failed and is about to be retried. */
export interface RetryEvent {
  method: string;
  /** Path and query (the key, never the value or a header). */
  path: string;
  /** The endpoint that failed. */
  endpoint: string;
  /** Attempts made so far. */
  attempt: number;
  /** Why: the status and body of a 503 or 504, or the connection error. */
  reason: string;
  /** The answer's status; undefined for a connection error. */
  status: number | undefined;
  /** Whether an attempt of this write so far may have applied (a retry then applies it at
   * most once, by its session write number or idempotency key). */
  maybeApplied: boolean;
  /** The pause before the next attempt. */
  delayMs: number;
}

/** What an attempt that may have applied means for the next one. */
type Writes =
  /** A read: any attempt may be repeated. */
  | "no"
  /** A write numbered in a session or keyed: repeating it applies it at most once. */
  | "repeatable"
  /** A write that must not be repeated once it may have applied. */
  | "once";

/** One call as sent. */
export interface Request {
  method: string;
  path: string;
  body?: Buffer | undefined;
  headers?: Record<string, string> | undefined;
}

/** How many times one write moves to a new session because the cluster ended its own. */
const SESSION_RESTARTS = 3;

/** The least time worth starting an attempt with. */
const MIN_ATTEMPT_MS = 10;

/** The call that gave up: unavailable, or unknown if an attempt may have applied. */
function gaveUp(maybeApplied: boolean, attempts: number, last: string, status: number | undefined, cause: unknown): KvError {
  return maybeApplied
    ? new OutcomeUnknownError(`outcome unknown after ${attempts} attempts: ${last}`, attempts, status, { cause })
    : new UnavailableError(`unavailable after ${attempts} attempts: ${last}`, attempts, status, { cause });
}

/** Shared state of a client: endpoints, connections, where to start next, sessions. */
export class Caller {
  /** The endpoint that answered last, tried first next time. */
  private preferred = 0;
  private readonly sessions = new Sessions();
  /** The session being opened, so concurrent writers open one, not many. */
  private opening: Promise<void> | undefined;

  constructor(
    private readonly endpoints: readonly Endpoint[],
    private readonly transport: Transport,
    private readonly policy: RetryPolicy,
    private readonly headers: Readonly<Record<string, string>>,
    private readonly onRetry: ((event: RetryEvent) => void) | undefined,
  ) {}

  /** How many sessions are open, for tests. */
  get openSessions(): number {
    return this.sessions.count;
  }

  /**
   * Sends `request` until a final answer or the deadline. Connection errors, 503 and 504
   * are retried on the next endpoint after a backoff; any other answer is final and
   * returned as is. A write keeps one session write number across its attempts (unless
   * it carries an Idempotency-Key of the caller's), and moves to a new session if the
   * cluster says its session ended before the write applied.
   */
  async run(request: Request, isWrite: boolean, deadlineMs: number | undefined): Promise<Answer> {
    const deadline = performance.now() + (deadlineMs ?? this.policy.deadlineMs);
    const ownKey = Object.keys(request.headers ?? {}).some((h) => h.toLowerCase() === "idempotency-key");
    if (!isWrite || ownKey) {
      return (await this.attempts(request, undefined, isWrite ? "repeatable" : "no", deadline)).answer;
    }
    for (let restarts = 0; ; restarts++) {
      const ticket = await this.ticket(deadline);
      try {
        const { answer, maybeApplied } = await this.attempts(request, ticket, "repeatable", deadline);
        if (answer.status !== 422 || codeOf(answer.body) !== "session_expired") return answer;
        this.sessions.end(ticket.session);
        const last = `422: ${answer.body.toString("utf8")}`;
        // An earlier attempt may have applied before the session's answers went.
        if (maybeApplied) throw new OutcomeUnknownError(`outcome unknown: the session ended after an attempt that may have applied (${last})`, 0, 422);
        if (restarts >= SESSION_RESTARTS) throw new UnavailableError(`unavailable: ${restarts + 1} sessions ended before the write applied (${last})`, 0, 422);
      } finally {
        ticket.release();
      }
    }
  }

  /** Sends a write that cannot be repeated safely: retried only while no attempt may have
   * applied (connection refused, 503); after that, OutcomeUnknownError. */
  async runOnce(request: Request, deadlineMs: number | undefined): Promise<Answer> {
    const deadline = performance.now() + (deadlineMs ?? this.policy.deadlineMs);
    return (await this.attempts(request, undefined, "once", deadline)).answer;
  }

  /** The next number of an open session, opening one if none has room. */
  private async ticket(deadline: number): Promise<Ticket> {
    for (;;) {
      const ticket = this.sessions.take();
      if (ticket) return ticket;
      const own = this.opening === undefined;
      const opening = (this.opening ??= this.openSession(deadline).finally(() => {
        this.opening = undefined;
      }));
      try {
        await opening;
      } catch (e) {
        // Another writer's open gave up at its own deadline, which may come before ours:
        // try again. A refusal (a read-only token, say) is every writer's answer.
        if (own || !(e instanceof UnavailableError) || performance.now() >= deadline) throw e;
      }
    }
  }

  private async openSession(deadline: number): Promise<void> {
    // Retrying an open at worst leaves a session unused, which ends when idle.
    const { answer } = await this.attempts({ method: "POST", path: "/v1/sessions" }, undefined, "no", deadline);
    const id = text(success(answer, 201), "session");
    if (!/^[0-9a-fA-F]{32}$/.test(id)) throw new KvError(`session id ${JSON.stringify(id)} is not 32 hex digits`, "invalid_answer", answer.status);
    this.sessions.add(id.toLowerCase());
  }

  /** The attempts of one call until a final answer or `deadline`, with whether an
   * attempt of a write may have applied. */
  private async attempts(
    request: Request,
    ticket: Ticket | undefined,
    writes: Writes,
    deadline: number,
  ): Promise<{ answer: Answer; maybeApplied: boolean }> {
    const isWrite = writes !== "no";
    const first = this.preferred;
    let backoff = this.policy.initialBackoffMs;
    let maybeApplied = false;
    for (let attempts = 1; ; attempts++) {
      const index = (first + attempts - 1) % this.endpoints.length;
      const endpoint = this.endpoints[index] as Endpoint;
      const left = deadline - performance.now();
      const headers: Record<string, string> = { ...this.headers, ...request.headers };
      if (ticket) headers["kv-session"] = ticket.header();
      if (request.body) headers["content-type"] = "application/json";
      let last: string;
      let status: number | undefined;
      let cause: unknown;
      try {
        const timeout = Math.min(this.policy.requestTimeoutMs, Math.max(left, 1));
        const answer = await this.transport.send(endpoint, request.method, request.path, headers, request.body, timeout);
        if (answer.status !== 503 && answer.status !== 504) {
          this.preferred = index;
          return { answer, maybeApplied };
        }
        status = answer.status;
        maybeApplied ||= isWrite && answer.status === 504;
        last = `${endpoint.url} answered ${answer.status}: ${answer.body.toString("utf8").slice(0, 300)}`;
      } catch (e) {
        if (!(e instanceof SendError)) throw e;
        // A request that never connected was not applied; any other failure of a write
        // leaves its outcome open.
        maybeApplied ||= isWrite && e.sent;
        last = e.message;
        cause = e;
      }
      if (maybeApplied && writes === "once") throw gaveUp(true, attempts, last, status, cause);
      const pause = backoff * (0.5 + Math.random() / 2);
      // An attempt left with almost no time would only time out, and report that
      // instead of what the nodes answered: give up now.
      if (performance.now() + pause + MIN_ATTEMPT_MS >= deadline) throw gaveUp(maybeApplied, attempts, last, status, cause);
      this.report({ method: request.method, path: request.path, endpoint: endpoint.url, attempt: attempts, reason: last, status, maybeApplied, delayMs: pause });
      await sleep(pause);
      backoff = Math.min(backoff * 2, this.policy.maxBackoffMs);
    }
  }

  private report(event: RetryEvent): void {
    if (!this.onRetry) return;
    try {
      this.onRetry(event);
    } catch {
      // A logging hook must not turn a call that may have applied into a thrown error.
    }
  }
}
