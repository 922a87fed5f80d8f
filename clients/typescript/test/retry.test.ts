// The retry discipline against fake nodes, and the client's pure parts: key paths,
// sessions, the error table. No cluster needed.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { test } from "node:test";

import { refusal } from "../src/answer.js";
import {
  ForbiddenError,
  IdempotencyKeyReusedError,
  InternalError,
  InvalidRequestError,
  KeyExistsError,
  KvClient,
  KvError,
  LimitError,
  NotFoundError,
  OutcomeUnknownError,
  RevisionMismatchError,
  SERVER_ERROR_CODES,
  StorageFullError,
  UnauthenticatedError,
  UnavailableError,
  type RetryEvent,
} from "../src/index.js";
import { keyPath } from "../src/keys.js";
import { SESSION_WINDOW, Sessions } from "../src/session.js";
import { ScriptedNode, sessionHeader, type Step } from "./scripted.js";

/** Short deadlines and backoff, so a test of giving up takes a fraction of a second. */
const quick = { deadlineMs: 600, initialBackoffMs: 5, maxBackoffMs: 20, requestTimeoutMs: 200 };

async function withNode(script: Step[], body: (node: ScriptedNode, kv: KvClient, retries: RetryEvent[]) => Promise<void>): Promise<void> {
  const node = await ScriptedNode.start(script);
  const retries: RetryEvent[] = [];
  const kv = new KvClient({ endpoints: [node.url], ...quick, onRetry: (e) => retries.push(e) });
  try {
    await body(node, kv, retries);
  } finally {
    kv.close();
    await node.stop();
  }
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected the call to fail");
}

test("unreachable endpoints give UnavailableError within the deadline, for writes too", async () => {
  // Port 1 on loopback refuses connections: nothing is applied anywhere.
  const kv = new KvClient({ endpoints: ["http://127.0.0.1:1", "http://127.0.0.2:1"], ...quick, deadlineMs: 300 });
  const started = performance.now();
  const error = await rejection(kv.set("k", 1));
  assert.ok(error instanceof UnavailableError, String(error));
  assert.ok(error.attempts >= 2, `${error.attempts} attempts`);
  assert.equal(error.code, "unavailable");
  assert.match(error.message, /ECONNREFUSED/);
  assert.ok(performance.now() - started < 2000);
});

test("a write keeps its session write number on every attempt through 503 and 504", async () => {
  await withNode([503, 504, 200], async (node, kv, retries) => {
    const meta = await kv.set("k", 1);
    assert.equal(meta.revision, 7);
    const first = sessionHeader(1, 1, 1);
    assert.deepEqual(
      node.seen.map((s) => s.session),
      [first, first, first],
    );
    assert.deepEqual(
      retries.map((r) => [r.status, r.maybeApplied]),
      [
        [503, false],
        [504, true],
      ],
    );
    // The next write is numbered 2 and acknowledges the first, which is done.
    await kv.set("k", 2);
    assert.equal(node.seen.at(-1)?.session, sessionHeader(1, 2, 2));
    assert.equal(node.sessionsOpened, 1);
  });
});

test("writes in flight acknowledge only the numbers below the lowest unfinished one", async () => {
  await withNode([200], async (node, kv) => {
    await Promise.all([kv.set("a", 1), kv.set("b", 1), kv.set("c", 1)]);
    await kv.set("d", 1);
    const headers = node.seen.map((s) => s.session);
    assert.equal(headers.length, 4);
    // The three concurrent writes were 1, 2, 3, each acknowledging nothing not done yet.
    assert.deepEqual(headers.slice(0, 3).sort(), [sessionHeader(1, 1, 1), sessionHeader(1, 2, 1), sessionHeader(1, 3, 1)].sort());
    assert.equal(headers[3], sessionHeader(1, 4, 4));
  });
});

test("a session the cluster ended is replaced, and the write applied in the new one", async () => {
  await withNode([422, 200], async (node, kv) => {
    await kv.set("k", 1);
    assert.deepEqual(
      node.seen.map((s) => s.session),
      [sessionHeader(1, 1, 1), sessionHeader(2, 1, 1)],
    );
    assert.equal(kv.openSessions, 1);
  });
});

test("a writer waiting for another's session open is not failed by that one's shorter deadline", async () => {
  await withNode([200], async (node, kv) => {
    node.sessionsRefusedUntil = performance.now() + 300;
    const [short, long] = await Promise.allSettled([kv.set("a", 1, { deadlineMs: 100 }), kv.set("b", 1, { deadlineMs: 3000 })]);
    assert.ok(short.status === "rejected" && short.reason instanceof UnavailableError, String(short.status));
    assert.equal(long.status, "fulfilled");
    assert.equal(node.sessionsOpened, 1);
    assert.deepEqual(
      node.seen.map((s) => s.path),
      ["/v1/kv/b"],
    );
  });
});

test("a session that ended after an attempt that may have applied is OutcomeUnknownError", async () => {
  await withNode([504, 422], async (node, kv) => {
    const error = await rejection(kv.set("k", 1));
    assert.ok(error instanceof OutcomeUnknownError, String(error));
    assert.equal(node.seen.length, 2, "the write is not sent again in a new session");
  });
});

test("a write whose answer never comes is OutcomeUnknownError, a read's is UnavailableError", async () => {
  await withNode(["hang"], async (node, kv) => {
    const write = await rejection(kv.set("k", 1));
    assert.ok(write instanceof OutcomeUnknownError, String(write));
    assert.match(write.message, /no answer/);
    const read = await rejection(kv.get("k"));
    assert.ok(read instanceof UnavailableError, String(read));
    assert.ok(node.seen.length >= 4);
  });
});

test("reads are retried through 503 and 504 and give UnavailableError at the deadline", async () => {
  await withNode([504, 503], async (node, kv) => {
    const error = await rejection(kv.get("k"));
    assert.ok(error instanceof UnavailableError, String(error));
    assert.equal(error.status, 503);
    assert.ok(error.attempts >= 3 && error.attempts === node.seen.length, `${error.attempts} attempts, ${node.seen.length} seen`);
  });
});

test("the caller's idempotency key replaces the session and goes with every attempt", async () => {
  await withNode([504, 200], async (node, kv) => {
    await kv.set("k", 1, { idempotencyKey: "evt_1" });
    assert.deepEqual(
      node.seen.map((s) => [s.session, s.idempotencyKey]),
      [
        [undefined, "evt_1"],
        [undefined, "evt_1"],
      ],
    );
    assert.equal(node.sessionsOpened, 0);
    const bad = await rejection(kv.set("k", 1, { idempotencyKey: "has space" }));
    assert.ok(bad instanceof InvalidRequestError && bad.code === "invalid_idempotency_key", String(bad));
  });
});

test("a token is created at most once: a 504 is OutcomeUnknownError at once, a 503 is retried", async () => {
  await withNode([504, 201], async (node, kv) => {
    const error = await rejection(kv.createToken({ name: "t", grants: [] }));
    assert.ok(error instanceof OutcomeUnknownError, String(error));
    assert.equal(error.attempts, 1);
    assert.equal(node.seen.length, 1);
  });
  await withNode([503, 201], async (node, kv) => {
    const created = await kv.createToken({ name: "t", grants: [] });
    assert.equal(created.token, "kvt_x");
    assert.equal(node.seen.length, 2);
  });
});

test("other answers are final: a 500 is InternalError after one attempt", async () => {
  await withNode([500, 200], async (node, kv) => {
    const error = await rejection(kv.get("k"));
    assert.ok(error instanceof InternalError, String(error));
    assert.equal(node.seen.length, 1);
  });
});

test("the next call starts with the endpoint that answered last", async () => {
  await withNode([200], async (node) => {
    const kv = new KvClient({ endpoints: ["http://127.0.0.1:1", node.url], ...quick });
    try {
      await kv.set("a", 1);
      const retriesBefore: RetryEvent[] = [];
      const again = new KvClient({ endpoints: ["http://127.0.0.1:1", node.url], ...quick, onRetry: (e) => retriesBefore.push(e) });
      await again.get("k").catch(() => undefined);
      assert.equal(retriesBefore.length, 1, "a new client tries the dead endpoint first");
      const retries = node.seen.length;
      await kv.get("k").catch(() => undefined);
      assert.equal(node.seen.length, retries + 1);
      again.close();
    } finally {
      kv.close();
    }
  });
});

test("fromEnv reads the endpoints and token as kvctl does, and a certificate only with its key", async () => {
  await withNode([200], async (node) => {
    const kv = KvClient.fromEnv({ deadlineMs: 500 }, { KV_ENDPOINTS: ` ${node.url} ,`, KV_TOKEN: "kvt_secret" });
    await kv.set("k", 1);
    kv.close();
    assert.deepEqual(
      node.seen.map((s) => s.authorization),
      ["Bearer kvt_secret"],
    );
  });
  const lonely = (() => {
    try {
      KvClient.fromEnv({}, { KV_CERT: new URL(import.meta.url).pathname });
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  assert.ok(lonely instanceof InvalidRequestError && /KV_CERT and KV_KEY/.test(lonely.message), String(lonely));
  assert.throws(() => new KvClient({ endpoints: "ftp://127.0.0.1:1" }), InvalidRequestError);
  assert.throws(() => new KvClient({ endpoints: [] }), InvalidRequestError);
  assert.throws(() => new KvClient({ endpoints: "http://127.0.0.1:1", token: "two\nlines" }), (e: unknown) => e instanceof InvalidRequestError && !e.message.includes("two"));
});

test("a key arrives as it left: every character but unreserved ones and / is escaped", () => {
  for (const key of ["users/1:profile", "a\\b", "sp ace/q?x#y&z=1+2", "caf\u00e9/\u{1f600}", "a//b/", "%2e%2e", "a/%2e%2e/b", "a\\..\\b", "a/...", "%", "[x]|^", "!'()*"]) {
    const path = keyPath(key);
    assert.match(path, /^\/v1\/kv\/[A-Za-z0-9\-._~/%]+$/, key);
    assert.equal(decodeURIComponent(path.slice("/v1/kv/".length)), key);
    // What a URL parser makes of it is the same path: nothing it would resolve or re-escape.
    assert.equal(new URL(`http://h${path}`).pathname, path, key);
  }
  assert.equal(keyPath("k".repeat(4096)).length, "/v1/kv/".length + 4096);
  for (const bad of ["", "..", ".", "a/../b", "a/./b", "a/..", "k".repeat(4097), "\u{e9}".repeat(2049), "lone\ud800"]) {
    assert.throws(() => keyPath(bad), (e: unknown) => e instanceof InvalidRequestError && e.code === "invalid_key" && e.status === undefined, JSON.stringify(bad).slice(0, 20));
  }
});

test("sessions number writes, acknowledge the ones done, and stop at the window", () => {
  const sessions = new Sessions();
  assert.equal(sessions.take(), undefined, "no session open yet");
  sessions.add("ab");
  const stuck = sessions.take();
  assert.ok(stuck);
  for (let i = 1; i < SESSION_WINDOW; i++) sessions.take()?.release();
  assert.equal(sessions.take(), undefined, "the window is full behind write 1");
  sessions.add("cd");
  const other = sessions.take();
  assert.equal(other?.session, "cd");
  stuck.release();
  const next = sessions.take();
  assert.equal(next?.header(), `ab; seq=${SESSION_WINDOW + 1}; ack=${SESSION_WINDOW + 1}`);
});

test("the error table is README's, and each code has its typed error", () => {
  // The rows after README's "| Status | Code | When |" header, as kv-server's test reads them.
  const readme = readFileSync(new URL("../../../../README.md", import.meta.url), "utf8");
  const table = readme.split("| Status | Code | When |")[1] ?? "";
  const rows = table.split("\n").slice(2);
  const documented = rows.slice(0, rows.findIndex((l) => !l.startsWith("|"))).map((row) => {
    const cells = row.split("|").map((c) => c.trim());
    return [cells[2]?.replace(/`/g, ""), Number(cells[1])];
  });
  assert.deepEqual(documented, Object.entries(SERVER_ERROR_CODES));
  const expected: Record<string, new (...args: never[]) => KvError> = {
    unauthenticated: UnauthenticatedError,
    forbidden: ForbiddenError,
    key_not_found: NotFoundError,
    key_exists: KeyExistsError,
    revision_mismatch: RevisionMismatchError,
    value_too_large: LimitError,
    uri_too_long: LimitError,
    headers_too_large: LimitError,
    idempotency_key_reused: IdempotencyKeyReusedError,
    internal: InternalError,
  };
  for (const [code, status] of Object.entries(SERVER_ERROR_CODES)) {
    const body = Buffer.from(JSON.stringify({ error: { code, message: "m" }, current: null }));
    const error = refusal(status, body);
    const Class = expected[code] ?? (status === 507 ? StorageFullError : status < 500 ? InvalidRequestError : KvError);
    assert.ok(error instanceof Class, `${code} gave ${error.name}`);
    assert.equal(error.code, code);
    assert.equal(error.status, status);
  }
  const unknown = refusal(418, Buffer.from("<html>"));
  assert.equal(unknown.code, "invalid_answer");
});
