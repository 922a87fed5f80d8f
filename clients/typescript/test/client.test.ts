// The client against a real three-node cluster: every call, its failure cases, and the
// uses the README shows (a cache with a TTL, webhook deduplication, a fenced lock, a
// namespaced key space), written as a user of the package would write them.

import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, test } from "node:test";

import {
  ForbiddenError,
  IdempotencyKeyReusedError,
  InvalidRequestError,
  KvClient,
  LimitError,
  UnavailableError,
  type Entry,
} from "../src/index.js";
import { scenario, TestCluster } from "./cluster.js";

let cluster: TestCluster | undefined;
let kv: KvClient;

before(async () => {
  cluster = await TestCluster.start(3);
  kv = new KvClient({ endpoints: cluster.endpoints() });
});

after(async () => {
  kv?.close();
  await cluster?.stop();
});

function it(name: string, body: (c: TestCluster) => Promise<void>): void {
  test(
    name,
    scenario(
      () => cluster,
      () => body(cluster as TestCluster),
    ),
  );
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected the call to fail");
}

it("get, set and delete work as in Attio's SDK, with the entry's metadata", async (c) => {
  assert.equal(await kv.get("basic/missing"), undefined);
  const first = await kv.set("basic/user", { name: "ada", langs: ["en"] });
  assert.equal(first.version, 1);
  assert.equal(first.createRevision, first.revision);
  assert.equal(first.expiresAtMs, null);
  assert.deepEqual(await kv.get<{ name: string }>("basic/user"), { name: "ada", langs: ["en"] });
  const second = await kv.set("basic/user", { name: "grace" });
  assert.equal(second.version, 2);
  assert.ok(second.revision > first.revision);
  assert.equal(second.createRevision, first.revision);
  const entry = await kv.getEntry<{ name: string }>("basic/user");
  assert.deepEqual(entry, { key: "basic/user", value: { name: "grace" }, revision: second.revision, createRevision: first.revision, version: 2, expiresAtMs: null, ttlMs: null });
  // A stored null is null; only an absent key is undefined.
  await kv.set("basic/nothing", null);
  assert.equal(await kv.get("basic/nothing"), null);
  // A stale read on a follower sees the write once the follower applied it.
  const leader = await c.leader();
  const local = new KvClient({ endpoints: [c.url(leader === 1 ? 2 : 1)] });
  await c.poll("the follower to apply the write", async () => (await local.getEntry("basic/user", { consistency: "stale" }))?.version === 2);
  local.close();
  const deleted = await kv.delete("basic/user");
  assert.equal(deleted.deleted, true);
  assert.ok(deleted.revision > second.revision);
  assert.equal(await kv.get("basic/user"), undefined);
  assert.equal((await kv.delete("basic/user")).deleted, false);
});

it("a TTL hides the key once it passes; keepTtl keeps it; a set without one clears it", async () => {
  // Caching an API response for a second, as the README's example does for longer.
  const before = Date.now();
  const cached = await kv.set("cache/weather/lisbon", { tempC: 21 }, { ttlInSeconds: 1 });
  assert.ok(cached.expiresAtMs !== null && cached.expiresAtMs >= before + 1000 && cached.expiresAtMs <= Date.now() + 1000, JSON.stringify(cached));
  assert.deepEqual(await kv.get("cache/weather/lisbon"), { tempC: 21 });
  const deadline = performance.now() + 10_000;
  while ((await kv.get("cache/weather/lisbon")) !== undefined) {
    assert.ok(performance.now() < deadline, "the key outlived its TTL by 9 s");
    await sleep(50);
  }
  assert.ok(Date.now() >= cached.expiresAtMs, "absent before its expiry");
  // A fraction of a second is rounded up, so the key never ends earlier than asked.
  const rounded = await kv.set("cache/rounded", 1, { ttlInSeconds: 0.2 });
  assert.ok(rounded.ttlMs !== null && rounded.ttlMs > 500, JSON.stringify(rounded));
  const long = await kv.set("cache/kept", 1, { ttlInSeconds: 600 });
  const kept = await kv.set("cache/kept", 2, { keepTtl: true });
  assert.equal(kept.expiresAtMs, long.expiresAtMs);
  const cleared = await kv.set("cache/kept", 3);
  assert.equal(cleared.expiresAtMs, null);
  for (const bad of [0, -1, Number.NaN, Infinity]) {
    const error = await rejection(kv.set("cache/bad", 1, { ttlInSeconds: bad }));
    assert.ok(error instanceof InvalidRequestError && error.code === "invalid_ttl" && error.status === undefined, String(error));
  }
  const conflicting = await rejection(kv.set("cache/bad", 1, { ttlInSeconds: 5, keepTtl: true }));
  assert.ok(conflicting instanceof InvalidRequestError && conflicting.code === "conflicting_ttl" && conflicting.status === 400, String(conflicting));
});

it("of 32 concurrent creators exactly one wins, and every loser gets the winner's entry", async (c) => {
  // Four processes' worth of clients, eight callers each.
  const clients = Array.from({ length: 4 }, () => new KvClient({ endpoints: c.endpoints() }));
  const results = await Promise.all(
    Array.from({ length: 32 }, (_, i) => (clients[i % 4] as KvClient).create("race/job-7", { worker: i }, { ttlInSeconds: 60 })),
  );
  clients.forEach((k) => k.close());
  const winners = results.flatMap((r, i) => (r.created ? [{ worker: i, revision: r.revision }] : []));
  assert.equal(winners.length, 1, `winners: ${JSON.stringify(winners)}`);
  const winner = winners[0] as { worker: number; revision: number };
  assert.deepEqual(await kv.get("race/job-7"), { worker: winner.worker });
  for (const r of results) {
    if (r.created) continue;
    assert.ok(r.current, "a loser sees the entry");
    assert.deepEqual(r.current.value, { worker: winner.worker });
    assert.equal(r.current.revision, winner.revision);
    assert.equal(r.current.version, 1);
  }
});

it("a counter incremented with compareAndSet by 16 concurrent writers ends at the exact count", async () => {
  const writers = 16;
  const each = 10;
  const start = await kv.create("counters/page-views", 0);
  assert.ok(start.created);
  let conflicts = 0;
  const increment = async (client: KvClient) => {
    let current = (await client.getEntry<number>("counters/page-views")) as Entry<number>;
    for (;;) {
      const swapped = await client.compareAndSet("counters/page-views", current.value + 1, current.revision);
      if (swapped.swapped) return;
      conflicts += 1;
      assert.ok(swapped.current, "the counter is never deleted");
      current = swapped.current;
    }
  };
  await Promise.all(
    Array.from({ length: writers }, async () => {
      const client = new KvClient({ endpoints: (cluster as TestCluster).endpoints() });
      for (let i = 0; i < each; i++) await increment(client);
      client.close();
    }),
  );
  const final = await kv.getEntry<number>("counters/page-views");
  assert.equal(final?.value, writers * each);
  assert.equal(final?.version, writers * each + 1);
  // Without conflicts the writers never raced, and the test would prove nothing.
  assert.ok(conflicts > 0, "no compare-and-set ever lost a race");
});

it("compareAndSet and deleteIf apply only at the key's revision and return the entry otherwise", async () => {
  const missing = await kv.compareAndSet("cas/missing", 1, 5);
  assert.deepEqual(missing, { swapped: false, current: null });
  assert.deepEqual(await kv.deleteIf("cas/missing", 5), { deleted: false, current: null });
  const v1 = await kv.set("cas/doc", { step: 1 });
  const v2 = await kv.compareAndSet("cas/doc", { step: 2 }, v1.revision, { ttlInSeconds: 300 });
  assert.ok(v2.swapped && v2.version === 2 && v2.expiresAtMs !== null);
  const stale = await kv.compareAndSet("cas/doc", { step: 3 }, v1.revision);
  assert.ok(!stale.swapped);
  assert.deepEqual(stale.current?.value, { step: 2 });
  assert.equal(stale.current?.revision, v2.revision);
  const staleDelete = await kv.deleteIf<{ step: number }>("cas/doc", v1.revision);
  assert.ok(!staleDelete.deleted && staleDelete.current?.value.step === 2);
  const deleted = await kv.deleteIf("cas/doc", v2.revision);
  assert.ok(deleted.deleted && deleted.revision > v2.revision);
  assert.equal(await kv.get("cas/doc"), undefined);
});

it("a lock with a fencing token: taken once, fenced by revision, released only by its holder", async () => {
  // The README's lock, as a worker would write it.
  const take = (client: KvClient, owner: string) => client.create("locks/nightly-report", { owner }, { ttlInSeconds: 1 });
  const a = await take(kv, "worker-a");
  assert.ok(a.created);
  const fencingToken = a.revision;
  const b = await take(kv, "worker-b");
  assert.ok(!b.created && b.current?.value.owner === "worker-a");
  // The lock expires while worker-a is stalled; worker-b takes it with a larger token.
  let c2 = await take(kv, "worker-b");
  const deadline = performance.now() + 10_000;
  while (!c2.created) {
    assert.ok(performance.now() < deadline, "the lock never expired");
    await sleep(50);
    c2 = await take(kv, "worker-b");
  }
  assert.ok(c2.revision > fencingToken, "a later holder's fencing token is larger");
  // worker-a's release must not remove worker-b's lock.
  const late = await kv.deleteIf("locks/nightly-report", fencingToken);
  assert.ok(!late.deleted);
  assert.deepEqual((await kv.get("locks/nightly-report")) as unknown, { owner: "worker-b" });
  assert.ok((await kv.deleteIf("locks/nightly-report", c2.revision)).deleted);
});

it("list pages through a prefix in key order, more than one page, and listKeys leaves values out", async () => {
  const n = 250;
  for (let i = 0; i < n; i += 50) {
    await Promise.all(Array.from({ length: 50 }, (_, j) => kv.set(`tenants/acme/users/${String(i + j).padStart(3, "0")}`, { n: i + j })));
  }
  // Neighbours of the prefix that must not be listed.
  await kv.set("tenants/acme/users", "the prefix itself without its slash");
  await kv.set("tenants/acme/usersX", 1);
  const sizes: number[] = [];
  for await (const page of kv.list("tenants/acme/users/", { pageSize: 100 }).pages()) sizes.push(page.length);
  assert.deepEqual(sizes, [100, 100, 50]);
  let i = 0;
  for await (const entry of kv.list<{ n: number }>("tenants/acme/users/", { pageSize: 64 })) {
    assert.equal(entry.key, `tenants/acme/users/${String(i).padStart(3, "0")}`);
    assert.equal(entry.value.n, i);
    i += 1;
  }
  assert.equal(i, n);
  const keys = await kv.listKeys("tenants/acme/users/", { pageSize: 1000, consistency: "stale" }).toArray();
  assert.equal(keys.length, n);
  assert.ok(keys.every((k) => !("value" in k) && k.version === 1));
  assert.deepEqual(await kv.list("tenants/nobody/").toArray(), []);
  const error = await rejection(kv.list("tenants/", { pageSize: 0 }).toArray());
  assert.ok(error instanceof InvalidRequestError && error.code === "invalid_limit" && error.status === 400, String(error));
});

it("keys with spaces, escapes, query characters and emoji arrive and list as they left", async () => {
  const keys = ["odd/users/1:profile", "odd/a\\b", "odd/sp ace/q?x#y&z=1+2", "odd/caf\u00e9/\u{1f600}", "odd/a//b/", "odd/%2e%2e", "odd/a\\..\\b", "odd/a/...", "odd/%", "odd/[x]|^!'()*"];
  for (const key of keys) await kv.set(key, key);
  for (const key of keys) assert.equal(await kv.get(key), key);
  const listed = (await kv.list<string>("odd/").toArray()).map((e) => e.key);
  assert.deepEqual(listed, [...keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
  // A prefix with a space and a plus travels in the query as itself.
  assert.deepEqual((await kv.listKeys("odd/sp ace/q?x#y&z=1+").toArray()).map((e) => e.key), ["odd/sp ace/q?x#y&z=1+2"]);
});

it("deletePrefix removes every key under the prefix at once and keeps later writes", async () => {
  await Promise.all(Array.from({ length: 30 }, (_, i) => kv.set(`sessions/tenant-a/${i}`, i)));
  await kv.set("sessions/tenant-b/0", "stays");
  const { revision } = await kv.deletePrefix("sessions/tenant-a/");
  assert.deepEqual(await kv.list("sessions/tenant-a/").toArray(), []);
  assert.equal(await kv.get("sessions/tenant-a/7"), undefined);
  assert.equal(await kv.get("sessions/tenant-b/0"), "stays");
  const later = await kv.set("sessions/tenant-a/new", 1);
  assert.ok(later.revision > revision);
  assert.deepEqual((await kv.listKeys("sessions/tenant-a/").toArray()).map((e) => e.key), ["sessions/tenant-a/new"]);
  const error = await rejection(kv.deletePrefix(""));
  assert.ok(error instanceof InvalidRequestError && error.code === "invalid_prefix" && error.status === 400, String(error));
});

it("webhook deliveries are processed once however often, and through whichever client, they arrive", async (c) => {
  // The handler as a user writes it: claim the delivery id, process, and give the claim
  // back if processing failed so a redelivery can try again.
  const processed = new Map<string, number>();
  let failNext = true;
  async function handleDelivery(client: KvClient, delivery: { id: string; order: number }): Promise<"processed" | "duplicate"> {
    const claim = await client.create(`webhooks/seen/${delivery.id}`, { at: Date.now() }, { ttlInSeconds: 86_400 });
    if (!claim.created) return "duplicate";
    try {
      if (delivery.id === "evt_flaky" && failNext) {
        failNext = false;
        throw new Error("the order service is down");
      }
      processed.set(delivery.id, (processed.get(delivery.id) ?? 0) + 1);
      return "processed";
    } catch (e) {
      await client.deleteIf(`webhooks/seen/${delivery.id}`, claim.revision);
      throw e;
    }
  }
  const processes = Array.from({ length: 3 }, () => new KvClient({ endpoints: c.endpoints() }));
  const deliveries = Array.from({ length: 20 }, (_, i) => ({ id: `evt_${i}`, order: i }));
  // Every process receives every delivery (the sender retried), all at once.
  const outcomes = await Promise.all(processes.flatMap((p) => deliveries.map((d) => handleDelivery(p, d))));
  assert.equal(outcomes.filter((o) => o === "processed").length, 20);
  assert.equal(outcomes.filter((o) => o === "duplicate").length, 40);
  assert.ok(deliveries.every((d) => processed.get(d.id) === 1), JSON.stringify([...processed]));
  // A delivery whose processing failed is processed by its redelivery, once.
  const flaky = { id: "evt_flaky", order: 99 };
  await assert.rejects(handleDelivery(processes[0] as KvClient, flaky), /order service is down/);
  assert.equal(await handleDelivery(processes[1] as KvClient, flaky), "processed");
  assert.equal(await handleDelivery(processes[2] as KvClient, flaky), "duplicate");
  assert.equal(processed.get("evt_flaky"), 1);

  // The other way: the delivery id as the write's idempotency key.
  const first = await (processes[0] as KvClient).set("orders/77/status", "paid", { idempotencyKey: "evt_1MqLx2" });
  const again = await (processes[1] as KvClient).set("orders/77/status", "paid", { idempotencyKey: "evt_1MqLx2" });
  assert.deepEqual(again, first);
  assert.equal((await kv.getEntry("orders/77/status"))?.version, 1);
  const reused = await rejection((processes[2] as KvClient).set("orders/77/status", "refunded", { idempotencyKey: "evt_1MqLx2" }));
  assert.ok(reused instanceof IdempotencyKeyReusedError && reused.status === 422, String(reused));
  processes.forEach((p) => p.close());
});

it("one client numbers all its writes in one session, and opens another past 256 in flight", async (c) => {
  const client = new KvClient({ endpoints: c.endpoints() });
  for (let i = 0; i < 20; i++) await client.set(`sessions-used/${i}`, i);
  assert.equal(client.openSessions, 1);
  const many = await Promise.all(Array.from({ length: 300 }, (_, i) => client.set(`sessions-used/many/${i}`, i)));
  assert.ok(many.every((m) => m.version === 1));
  assert.equal(client.openSessions, 2);
  client.close();
});

it("refusals are typed with the server's code and status, and are not retried", async (c) => {
  const retried: string[] = [];
  const client = new KvClient({ endpoints: c.endpoints(), onRetry: (e) => retried.push(e.reason) });
  const large = await rejection(client.set("errors/big", "x".repeat(1024 * 1024 + 10)));
  assert.ok(large instanceof LimitError && large.code === "value_too_large" && large.status === 413, String(large));
  let deep: unknown = 1;
  for (let i = 0; i < 70; i++) deep = [deep];
  const nested = await rejection(client.set("errors/deep", deep));
  assert.ok(nested instanceof InvalidRequestError && nested.code === "invalid_json" && nested.status === 400, String(nested));
  const notJson = await rejection(client.set("errors/undefined", undefined));
  assert.ok(notJson instanceof InvalidRequestError && notJson.code === "invalid_json" && notJson.status === undefined, String(notJson));
  const dots = await rejection(client.get("errors/../x"));
  assert.ok(dots instanceof InvalidRequestError && dots.code === "invalid_key", String(dots));
  // Tokens are refused by a cluster with auth off.
  const tokens = await rejection(client.createToken({ name: "app", grants: [] }));
  assert.ok(tokens instanceof ForbiddenError && tokens.status === 403, String(tokens));
  assert.deepEqual(retried, []);
  client.close();
  const status = await kv.cluster();
  assert.equal(typeof status.leader_id, "number");
});

it("with no node reachable a call gives UnavailableError by its deadline", async () => {
  const client = new KvClient({ endpoints: ["http://127.0.0.1:1"], deadlineMs: 400 });
  const started = performance.now();
  const error = await rejection(client.get("k", { deadlineMs: 200 }));
  assert.ok(error instanceof UnavailableError, String(error));
  assert.ok(performance.now() - started < 1000);
});
