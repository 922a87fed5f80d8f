// The test cluster: real kv-server processes on free loopback ports, each with its own
// data directory in one temp folder, as the Rust harness (tests/src/lib.rs) runs them.
// Nothing here sleeps for a fixed time: every wait polls with a deadline.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { accessSync, constants, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as net from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

/** How long a cluster may take to elect a leader or catch up. */
export const SETTLE_MS = 30_000;

/** What to turn on in every node. */
export interface Tuning {
  /** Auth with a bootstrap admin token (`TestCluster.adminToken`). */
  auth?: boolean;
  /** TLS on both ports, from certificates `kv-server certs` makes (`TestCluster.caPem`). */
  tls?: boolean;
}

interface TestNode {
  id: number;
  clientPort: number;
  raftPort: number;
  config: string;
  log: string;
  child: ChildProcess | undefined;
}

/** Every node process this test process started, killed at exit if still running, so a
 * crashed test run leaves none behind. */
const started = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of started) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
});

/** The kv-server binary: `KV_SERVER_BIN`, else the `checked` build in the shared target
 * directory that scripts/cluster.sh and scripts/test.sh build. */
export function serverBinary(): string {
  const target = process.env.CARGO_TARGET_DIR || join(homedir(), ".cache/quorum-kv/target");
  const bin = process.env.KV_SERVER_BIN || join(target, "checked/kv-server");
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(
      `kv-server is missing at ${bin}: build it with \`cargo build --profile checked --bin kv-server\` ` +
        "(or `scripts/cluster.sh up`), or point KV_SERVER_BIN at one",
    );
  }
  return bin;
}

/** Free loopback ports, held until all are chosen so none is handed out twice; from
 * 17400-17999, below the kernel's ephemeral range, so a restarted node cannot find its
 * port taken by the local end of some outgoing connection. */
async function freePorts(count: number): Promise<number[]> {
  const held: net.Server[] = [];
  try {
    for (let tries = 0; held.length < count; tries++) {
      if (tries > 1000) throw new Error("no free port in 17400-17999 after 1000 tries");
      const port = 17400 + Math.floor(Math.random() * 600);
      const server = net.createServer();
      const bound = await new Promise<boolean>((resolve) => {
        server.once("error", () => resolve(false));
        server.listen(port, "127.0.0.1", () => resolve(true));
      });
      if (bound) held.push(server);
    }
    return held.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(held.map((s) => new Promise((resolve) => s.close(resolve))));
  }
}

/** A running cluster. */
export class TestCluster {
  readonly nodes: TestNode[];
  /** The bootstrap admin token, when auth is on. */
  readonly adminToken: string | undefined;
  /** The cluster's CA, when TLS is on. */
  readonly caPem: Buffer | undefined;
  /** The folder holding configurations, logs and data. */
  readonly dir: string;
  /** Set by `scenario` when a test fails: the folder is kept for inspection. */
  failed = false;
  private readonly bin: string;
  private readonly scheme: "http" | "https";

  private constructor(dir: string, bin: string, nodes: TestNode[], adminToken: string | undefined, caPem: Buffer | undefined) {
    this.dir = dir;
    this.bin = bin;
    this.nodes = nodes;
    this.adminToken = adminToken;
    this.caPem = caPem;
    this.scheme = caPem ? "https" : "http";
  }

  /** Starts `n` nodes and waits until every one is ready and they agree on a leader. */
  static async start(n = 3, tuning: Tuning = {}): Promise<TestCluster> {
    const bin = serverBinary();
    const dir = mkdtempSync(join(tmpdir(), "quorum-kv-ts-test-"));
    const ports = await freePorts(2 * n);
    const port = (i: number) => ports[i] as number;
    const members = Array.from(
      { length: n },
      (_, i) => `  { id = ${i + 1}, client_addr = "127.0.0.1:${port(2 * i)}", raft_addr = "127.0.0.1:${port(2 * i + 1)}" },`,
    ).join("\n");
    let adminToken: string | undefined;
    let auth = "";
    if (tuning.auth) {
      adminToken = randomBytes(32).toString("hex");
      const file = join(dir, "admin-token");
      writeFileSync(file, `${adminToken}\n`, { mode: 0o600 });
      auth = `[auth]\nadmin_token_file = ${JSON.stringify(file)}\n`;
    }
    let caPem: Buffer | undefined;
    const tlsDir = join(dir, "tls");
    if (tuning.tls) {
      const args = ["certs", "--dir", tlsDir];
      for (let id = 1; id <= n; id++) args.push("--node", `${id}=127.0.0.1`);
      const made = spawnSync(bin, args, { encoding: "utf8" });
      if (made.status !== 0) throw new Error(`kv-server certs failed: ${made.stderr}`);
      caPem = readFileSync(join(tlsDir, "ca.pem"));
    }
    const nodes: TestNode[] = [];
    for (let i = 0; i < n; i++) {
      const id = i + 1;
      const config = join(dir, `node${id}.toml`);
      const file = (name: string) => JSON.stringify(join(tlsDir, name));
      const tls = tuning.tls ? `[tls]\ncert_file = ${file(`node${id}.pem`)}\nkey_file = ${file(`node${id}-key.pem`)}\nca_file = ${file("ca.pem")}\n` : "";
      writeFileSync(
        config,
        `id = ${id}\nclient_addr = "127.0.0.1:${port(2 * i)}"\nraft_addr = "127.0.0.1:${port(2 * i + 1)}"\n` +
          `data_dir = ${JSON.stringify(join(dir, `node${id}`))}\ncluster_secret = "test-secret"\n` +
          `members = [\n${members}\n]\n\n[raft]\nheartbeat_ms = 100\nelection_min_ms = 500\nelection_max_ms = 1000\nlog_segment_mib = 4\n\n` +
          `[limits]\n${tls}${auth}`,
      );
      nodes.push({ id, clientPort: port(2 * i), raftPort: port(2 * i + 1), config, log: join(dir, `node${id}.log`), child: undefined });
    }
    const cluster = new TestCluster(dir, bin, nodes, adminToken, caPem);
    try {
      for (const node of nodes) cluster.spawn(node.id);
      for (const node of nodes) await cluster.waitReady(node.id);
      await cluster.leader();
    } catch (e) {
      cluster.failed = true;
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  private node(id: number): TestNode {
    const node = this.nodes[id - 1];
    if (!node) throw new Error(`no node ${id}`);
    return node;
  }

  private spawn(id: number): void {
    const node = this.node(id);
    const log = openSync(node.log, "a");
    try {
      const child = spawn(this.bin, ["--config", node.config], {
        stdio: ["ignore", log, log],
        env: { ...process.env, RUST_LOG: process.env.KV_TEST_LOG ?? "info,openraft=info" },
      });
      started.add(child);
      child.once("exit", () => started.delete(child));
      node.child = child;
    } finally {
      closeSync(log);
    }
  }

  /** `http://127.0.0.1:PORT` of node `id` (`https://` with TLS). */
  url(id: number): string {
    return `${this.scheme}://127.0.0.1:${this.node(id).clientPort}`;
  }

  /** The client URLs of nodes `ids` (every node by default). */
  endpoints(ids: number[] = this.nodes.map((n) => n.id)): string[] {
    return ids.map((id) => this.url(id));
  }

  /** The ids of nodes whose process runs. */
  live(): number[] {
    return this.nodes.filter((n) => n.child).map((n) => n.id);
  }

  /** The process id of node `id`, if it runs. */
  pid(id: number): number | undefined {
    return this.node(id).child?.pid;
  }

  /** kill -9 node `id` by its process id, and wait until it is gone. */
  async kill(id: number): Promise<void> {
    const node = this.node(id);
    const child = node.child;
    node.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }

  /** Starts node `id` again on its data directory. */
  async restart(id: number): Promise<void> {
    await this.kill(id);
    this.spawn(id);
  }

  /** GET `path` from node `id` as the admin: status and JSON body, or undefined when it
   * does not answer within a second. */
  async probe(id: number, path: string): Promise<{ status: number; body: Record<string, unknown> } | undefined> {
    const headers: Record<string, string> = this.adminToken ? { authorization: `Bearer ${this.adminToken}` } : {};
    const options: https.RequestOptions = { host: "127.0.0.1", port: this.node(id).clientPort, path, headers, timeout: 1000, agent: false };
    if (this.caPem) options.ca = this.caPem;
    return new Promise((resolve) => {
      const request = (this.caPem ? https : http).get(options, (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (c: Buffer) => chunks.push(c));
        response.on("error", () => resolve(undefined));
        response.on("end", () => {
          try {
            resolve({ status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown> });
          } catch {
            resolve(undefined);
          }
        });
      });
      request.on("timeout", () => request.destroy());
      request.on("error", () => resolve(undefined));
    });
  }

  /** Polls `check` every 50 ms until it returns true, failing after SETTLE_MS. */
  async poll(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
    const deadline = performance.now() + SETTLE_MS;
    while (!(await check())) {
      if (performance.now() > deadline) throw new Error(`timed out after ${SETTLE_MS} ms waiting for ${what}; logs in ${this.dir}`);
      await sleep(50);
    }
  }

  /** Waits until node `id` knows a leader and has applied what it knows committed. */
  async waitReady(id: number): Promise<void> {
    await this.poll(`node ${id} ready`, async () => (await this.probe(id, "/readyz"))?.status === 200);
  }

  /** The leader every live node agrees on (waits until they do). */
  async leader(): Promise<number> {
    let found = 0;
    await this.poll("the live nodes to agree on a leader", async () => {
      const seen = await Promise.all(this.live().map(async (id) => (await this.probe(id, "/v1/cluster"))?.body.leader_id));
      const first = seen[0];
      if (typeof first === "number" && seen.every((s) => s === first) && this.live().includes(first)) {
        found = first;
        return true;
      }
      return false;
    });
    return found;
  }

  /** Kills every node; removes the folder unless a test failed, which keeps it. */
  async stop(): Promise<void> {
    await Promise.all(this.live().map((id) => this.kill(id)));
    if (this.failed) {
      console.error(`a test failed: node logs and data kept in ${this.dir}`);
    } else {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** `fn` as a test body that marks `cluster` failed when it throws, so its logs stay. */
export function scenario(cluster: () => TestCluster | undefined, fn: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await fn();
    } catch (e) {
      const c = cluster();
      if (c) c.failed = true;
      throw e;
    }
  };
}
