// Writes in flight while the leader is killed with SIGKILL (and then restarted) are
// retried on the other nodes and applied exactly once.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { KvClient, OutcomeUnknownError, UnavailableError, type Entry, type RetryEvent } from "../src/index.js";
import { Transport } from "../src/transport.js";
import { scenario, TestCluster } from "./cluster.js";

let cluster: TestCluster | undefined;

before(async () => {
  cluster = await TestCluster.start(3);
});

after(async () => {
  await cluster?.stop();
});

/** Writes answered with the node's record of an earlier attempt: each one a write whose
 * first attempt applied but whose answer was lost with the leader. */
let replays = 0;
const send = Transport.prototype.send;
Transport.prototype.send = async function (this: Transport, ...args: Parameters<Transport["send"]>) {
  const answer = await send.apply(this, args);
  if (answer.replayed) replays += 1;
  return answer;
};

/** What one write ended as: acknowledged (at what version), or failed. */
type Outcome = { key: string; ok: true; version: number } | { key: string; ok: false };

/**
 * Kill rounds at most. Each kills the leader while writes are in flight, and the test goes
 * on until a kill has caught a write that a follower already had but whose answer was lost
 * (its retry is then a replay). About four kills in ten do (the others land before the
 * batch in flight reached a follower: 14 of 39 measured), so twenty rounds all miss about
 * once in ten thousand runs; a round takes 2 to 5 seconds.
 */
const MAX_ROUNDS = 20;

function expected(error: unknown): void {
  // Only a deadline passing during a failover may fail a call.
  if (!(error instanceof OutcomeUnknownError || error instanceof UnavailableError)) throw error;
}

test(
  "writes in flight when the leader is killed are applied exactly once, and so is each increment",
  scenario(
    () => cluster,
    async () => {
      const c = cluster as TestCluster;
      const retries: RetryEvent[] = [];
      const checker = new KvClient({ endpoints: c.endpoints() });
      assert.ok((await checker.create("failover/counter", 0)).created);
      let acked = 0;
      let increments = 0;
      let unknownIncrements = 0;
      let stop = false;
      const client = async () => {
        // Every client talks to the leader first, so writes are in flight there when it dies.
        const leader = await c.leader();
        const order = [leader, ...c.live().filter((id) => id !== leader)];
        return new KvClient({ endpoints: c.endpoints(order), onRetry: (e) => retries.push(e) });
      };
      // Writers of their own keys: a create applied twice would find its own first copy
      // (created: false), a set applied twice would be at version 2.
      const writer = async (w: number): Promise<Outcome[]> => {
        const kv = await client();
        const outcomes: Outcome[] = [];
        for (let i = 0; !stop; i++) {
          const key = `failover/${w}-${i}`;
          try {
            let version: number;
            if (i % 2 === 0) {
              const created = await kv.create(key, { w, i });
              if (!created.created) assert.fail(`${key} was created twice: ${JSON.stringify(created.current)}`);
              version = created.version;
            } else {
              version = (await kv.set(key, { w, i })).version;
            }
            outcomes.push({ key, ok: true, version });
            acked += 1;
          } catch (error) {
            expected(error);
            outcomes.push({ key, ok: false });
          }
        }
        kv.close();
        return outcomes;
      };
      // Incrementers of one counter: an increment retried after its first attempt applied
      // would, without at-most-once, see its own write as a conflict and increment again.
      const incrementer = async () => {
        const kv = await client();
        while (!stop) {
          try {
            for (;;) {
              const current = (await kv.getEntry<number>("failover/counter")) as Entry<number>;
              if ((await kv.compareAndSet("failover/counter", current.value + 1, current.revision)).swapped) break;
            }
            increments += 1;
          } catch (error) {
            expected(error);
            unknownIncrements += 1;
          }
        }
        kv.close();
      };
      // A failed writer stops the others and fails the test at once, not at the end.
      let failure: unknown;
      const guarded = <T>(task: Promise<T>): Promise<T | undefined> =>
        task.catch((e: unknown) => {
          failure ??= e;
          stop = true;
          return undefined;
        });
      const writing = Array.from({ length: 12 }, (_, w) => guarded(writer(w)));
      const incrementing = Array.from({ length: 4 }, () => guarded(incrementer()));
      const waitAcked = (n: number) =>
        c.poll(`${n} acknowledged writes`, () => {
          if (failure) throw failure;
          return acked >= n;
        });
      let rounds = 0;
      try {
        await waitAcked(100);
        while (rounds < MAX_ROUNDS && (rounds === 0 || replays === 0)) {
          rounds += 1;
          const leader = await c.leader();
          await c.kill(leader);
          assert.notEqual(await c.leader(), leader);
          await waitAcked(acked + 20);
          await c.restart(leader);
          await c.waitReady(leader);
        }
        await waitAcked(acked + 100);
      } finally {
        stop = true;
      }
      const outcomes = (await Promise.all(writing)).flatMap((o) => o ?? []);
      await Promise.all(incrementing);
      if (failure) throw failure;
      let checked = 0;
      for (const outcome of outcomes) {
        const stored = await checker.getEntry(outcome.key);
        if (outcome.ok) {
          assert.ok(stored, `${outcome.key} was acknowledged but is missing`);
          assert.equal(stored.version, 1, `${outcome.key} was applied ${stored.version} times`);
          assert.equal(outcome.version, 1);
          checked += 1;
        } else {
          // Not acknowledged: absent, or applied once.
          assert.ok(stored === undefined || stored.version === 1, `${outcome.key} applied twice`);
        }
      }
      const counter = await checker.get<number>("failover/counter");
      assert.ok(
        counter !== undefined && counter >= increments && counter <= increments + unknownIncrements,
        `counter ${counter} after ${increments} acknowledged increments and ${unknownIncrements} unknown`,
      );
      const maybeApplied = retries.filter((r) => r.maybeApplied).length;
      console.log(
        `failover: ${rounds} leader kills; ${outcomes.length} writes (${checked} acknowledged), ${increments} increments ` +
          `(+${unknownIncrements} unknown); ${retries.length} retries, ${maybeApplied} after an attempt that may have applied, ${replays} replayed`,
      );
      // Unless a kill caught a write applied but not answered, nothing above was tested.
      assert.ok(replays > 0, `no retried write was answered from its first attempt's record in ${rounds} leader kills`);
      assert.ok(checked >= outcomes.length * 0.9, `only ${checked} of ${outcomes.length} writes were acknowledged`);
      checker.close();
    },
  ),
);
