// The client's sessions: every write takes the next number of an open session and keeps
// it on each retry, so the cluster applies it at most once while keeping only the answers
// of the writes still in flight (README, "Conditional writes and idempotent retries").
// A write done (answered, or given up) is acknowledged by the next write's `ack`.

/** Most writes of one session that may be unacknowledged at once (kv_core::SESSION_WINDOW). */
export const SESSION_WINDOW = 256;

interface Open {
  /** 32 hex digits. */
  id: string;
  nextSeq: number;
  inFlight: Set<number>;
  /** The cluster no longer knows it: no new writes take it. */
  ended: boolean;
}

/** One write's place in a session; `release` gives it back (acknowledged by later writes). */
export interface Ticket {
  readonly session: string;
  readonly seq: number;
  /** The `Kv-Session` header for an attempt of this write now. */
  header(): string;
  release(): void;
}

function lowest(numbers: Set<number>): number | undefined {
  let low: number | undefined;
  for (const n of numbers) if (low === undefined || n < low) low = n;
  return low;
}

/** The sessions of one client. */
export class Sessions {
  private open: Open[] = [];

  /** The next number of an open session with room in its window, if there is one. */
  take(): Ticket | undefined {
    const session = this.open.find((s) => !s.ended && s.nextSeq - (lowest(s.inFlight) ?? s.nextSeq) < SESSION_WINDOW);
    if (!session) return undefined;
    const seq = session.nextSeq++;
    session.inFlight.add(seq);
    let released = false;
    return {
      session: session.id,
      seq,
      // The lowest number still in flight is the acknowledgment: every write below it is done.
      header: () => `${session.id}; seq=${seq}; ack=${Math.min(lowest(session.inFlight) ?? seq, seq)}`,
      release: () => {
        if (released) return;
        released = true;
        session.inFlight.delete(seq);
        this.open = this.open.filter((s) => !(s.ended && s.inFlight.size === 0));
      },
    };
  }

  /** Adds session `id`, just opened. */
  add(id: string): void {
    this.open.push({ id, nextSeq: 1, inFlight: new Set(), ended: false });
  }

  /**
   * Marks session `id` as ended (writes in flight keep it, new ones take another), and
   * drops every session with nothing in flight: the cluster ends sessions that go idle, so
   * those have likely ended too.
   */
  end(id: string): void {
    const session = this.open.find((s) => s.id === id);
    if (session) session.ended = true;
    this.open = this.open.filter((s) => s.inFlight.size > 0);
  }

  /** How many sessions are open, for tests. */
  get count(): number {
    return this.open.length;
  }
}
