// The client against a cluster with TLS and tokens on: it trusts the cluster's CA (and
// only what it is given), sends its token, and reports refusals as typed errors.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ForbiddenError, KvClient, UnauthenticatedError, UnavailableError } from "../src/index.js";
import { scenario, TestCluster } from "./cluster.js";

let cluster: TestCluster | undefined;
let admin: KvClient;

before(async () => {
  cluster = await TestCluster.start(3, { auth: true, tls: true });
  admin = new KvClient({ endpoints: cluster.endpoints(), token: cluster.adminToken, ca: cluster.caPem });
});

after(async () => {
  admin?.close();
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

it("a token reads and writes only what its grants allow, over https with the cluster's CA", async (c) => {
  const app = await admin.createToken({ name: "billing", grants: [{ prefix: "billing/", access: "write" }] });
  const dashboards = await admin.createToken({ name: "dashboards", grants: [{ prefix: "", access: "read" }] });
  assert.match(app.token, /^kvt_/);
  assert.deepEqual(app.grants, [{ prefix: "billing/", access: "write" }]);
  const billing = new KvClient({ endpoints: c.endpoints(), token: app.token, ca: c.caPem });
  const reader = new KvClient({ endpoints: c.endpoints(), token: dashboards.token, ca: c.caPem });

  const written = await billing.set("billing/invoice-1", { total: 42 }, { ttlInSeconds: 600 });
  assert.equal(written.version, 1);
  assert.ok((await billing.create("billing/lock", "me")).created);
  assert.deepEqual(await billing.get("billing/invoice-1"), { total: 42 });
  assert.deepEqual((await billing.listKeys("billing/").toArray()).map((e) => e.key), ["billing/invoice-1", "billing/lock"]);
  for (const call of [() => billing.set("shared/x", 1), () => billing.get("shared/x"), () => billing.deletePrefix("shared/"), () => billing.list("shared/").toArray()]) {
    const error = await rejection(call());
    assert.ok(error instanceof ForbiddenError && error.code === "forbidden" && error.status === 403, String(error));
  }

  // A read-only token reads everything and writes nothing.
  assert.deepEqual(await reader.get("billing/invoice-1"), { total: 42 });
  for (const call of [() => reader.set("billing/invoice-1", 0), () => reader.delete("billing/invoice-1"), () => reader.create("dashboards/x", 1), () => reader.deletePrefix("billing/")]) {
    const error = await rejection(call());
    assert.ok(error instanceof ForbiddenError && error.status === 403, String(error));
  }
  // Tokens and the cluster's state are for admins.
  assert.ok((await rejection(billing.tokens())) instanceof ForbiddenError);
  assert.ok((await rejection(billing.createToken({ name: "mine", admin: true, grants: [] }))) instanceof ForbiddenError);
  assert.ok((await rejection(billing.cluster())) instanceof ForbiddenError);

  const listed = await admin.tokens();
  assert.deepEqual(listed.map((t) => t.name).sort(), ["billing", "dashboards"]);
  assert.ok(listed.every((t) => !("token" in t) && t.createdMs > 0));

  // Once revoked, the token is refused on every node.
  assert.deepEqual(await admin.revokeToken(app.id).then((r) => r.revoked), true);
  for (const id of c.live()) {
    const one = new KvClient({ endpoints: [c.url(id)], token: app.token, ca: c.caPem });
    const error = await rejection(one.get("billing/invoice-1"));
    assert.ok(error instanceof UnauthenticatedError && error.status === 401, `node ${id}: ${String(error)}`);
    assert.ok(!String(error).includes(app.token) && !JSON.stringify(error).includes(app.token), "the secret never shows in an error");
    one.close();
  }
  assert.equal((await admin.revokeToken(app.id)).revoked, false);
  billing.close();
  reader.close();
});

it("without a token, or with an unknown one, every call is UnauthenticatedError", async (c) => {
  for (const token of [undefined, "kvt_0123456789abcdef_not-a-real-secret-at-all-000000000000"]) {
    const anonymous = new KvClient({ endpoints: c.endpoints(), token, ca: c.caPem });
    for (const call of [() => anonymous.get("billing/invoice-1"), () => anonymous.set("a", 1), () => anonymous.list("").toArray(), () => anonymous.delete("a")]) {
      const error = await rejection(call());
      assert.ok(error instanceof UnauthenticatedError && error.code === "unauthenticated", String(error));
    }
    anonymous.close();
  }
});

it("a client that does not trust the cluster's CA refuses its nodes and applies nothing", async (c) => {
  // The system's CAs did not sign the cluster's certificates.
  const untrusting = new KvClient({ endpoints: c.endpoints(), token: c.adminToken, deadlineMs: 500 });
  const error = await rejection(untrusting.set("tls/never", 1));
  assert.ok(error instanceof UnavailableError, String(error));
  assert.match(error.message, /certificate/);
  untrusting.close();
  assert.equal(await admin.get("tls/never"), undefined);
  // Plain http to a TLS port gets no answer it can read either.
  const plain = new KvClient({ endpoints: c.endpoints().map((e) => e.replace("https:", "http:")), token: c.adminToken, deadlineMs: 500 });
  assert.ok((await rejection(plain.get("tls/never"))) instanceof Error);
  plain.close();
});
