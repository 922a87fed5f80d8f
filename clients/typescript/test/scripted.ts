// A fake node for the retry tests: it opens sessions numbered from 1 and answers every
// other request with the next status of a script, recording the headers each carried.

import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";

/** One request the fake node received (sessions opened are not listed). */
export interface Seen {
  method: string;
  path: string;
  session: string | undefined;
  idempotencyKey: string | undefined;
  authorization: string | undefined;
}

/** A scripted answer: a status (its body follows from it), or "hang" for no answer. */
export type Step = number | "hang";

const bodies: Record<number, unknown> = {
  200: { key: "k", revision: 7, create_revision: 7, version: 1, expires_at_ms: null, ttl_ms: null },
  201: { id: "00000000000000ab", name: "t", admin: false, grants: [], created_ms: 1, token: "kvt_x", revision: 9 },
  422: { error: { code: "session_expired", message: "this session has ended" } },
  500: { error: { code: "internal", message: "a failure inside the node" } },
  503: { error: { code: "no_leader", message: "no leader is known" } },
  504: { error: { code: "outcome_unknown", message: "the commit was not seen" } },
};

/** A fake node answering with `script` (its last step repeats). */
export class ScriptedNode {
  readonly seen: Seen[] = [];
  sessionsOpened = 0;
  /** Until then (a `performance.now()` time), session opens are answered 503. */
  sessionsRefusedUntil = 0;
  private readonly server: http.Server;

  private constructor(private readonly script: Step[]) {
    this.server = http.createServer((request, response) => {
      request.resume();
      request.on("end", () => this.answer(request, response));
    });
  }

  static async start(script: Step[]): Promise<ScriptedNode> {
    const node = new ScriptedNode(script);
    await new Promise<void>((resolve) => node.server.listen(0, "127.0.0.1", resolve));
    return node;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  private answer(request: http.IncomingMessage, response: http.ServerResponse): void {
    const reply = (status: number, body: unknown) => {
      response.writeHead(status, { "content-type": "application/json" });
      response.end(JSON.stringify(body));
    };
    if (request.method === "POST" && request.url === "/v1/sessions") {
      if (performance.now() < this.sessionsRefusedUntil) {
        reply(503, bodies[503]);
        return;
      }
      this.sessionsOpened += 1;
      reply(201, { session: this.sessionsOpened.toString(16).padStart(32, "0"), expires_at_ms: 1 });
      return;
    }
    const header = (name: string) => {
      const v = request.headers[name];
      return Array.isArray(v) ? v.join(",") : v;
    };
    this.seen.push({ method: request.method ?? "", path: request.url ?? "", session: header("kv-session"), idempotencyKey: header("idempotency-key"), authorization: header("authorization") });
    const step = this.script[Math.min(this.seen.length, this.script.length) - 1] ?? 200;
    if (step === "hang") return;
    reply(step, bodies[step] ?? { error: { code: "unknown", message: String(step) } });
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** The `Kv-Session` header of write `seq` in session number `session`, acknowledging `ack`. */
export function sessionHeader(session: number, seq: number, ack: number): string {
  return `${session.toString(16).padStart(32, "0")}; seq=${seq}; ack=${ack}`;
}
