//! The cluster harness: real `kv-server` processes on free loopback ports, each with
//! its own data directory, stopped when the cluster is dropped.
//!
//! Tests read like scenarios:
//! `let mut c = TestCluster::start(3).await?; let l = c.leader().await?; c.kill(l); …`.
//! Nothing here sleeps for a fixed time: every wait polls with a deadline.

pub mod abuse;
pub mod chaos;
pub mod checker;
pub mod history;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// How long a cluster may take to elect a leader or catch up.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Extra TOML lines for every node's `[raft]` and `[limits]` sections.
#[derive(Default, Clone)]
pub struct Tuning {
    /// Lines appended under `[raft]`.
    pub raft: Vec<String>,
    /// Lines appended under `[limits]`.
    pub limits: Vec<String>,
    /// Top-level lines for one node only (e.g. `clock_offset_ms = 1000`).
    pub node_lines: Vec<(u64, String)>,
    /// Give node N its own loopback address (`node_ip(N)`) for both ports, so
    /// address-based firewall rules can tell nodes apart (the nodes bind their outgoing
    /// connections to it). Otherwise every node listens on 127.0.0.1.
    pub own_addresses: bool,
    /// Put every node's data directory on one tmpfs of this many MiB (needs root), so a
    /// test can fill the disk for real. Unmounted when the cluster is dropped.
    pub disk_mib: Option<u64>,
    /// Turn auth on with a bootstrap admin token ([`TestCluster::admin_token`]), which
    /// the cluster's own requests ([`TestCluster::http`]) carry.
    pub auth: bool,
    /// Run every node with TLS on both ports, from certificates `kv-server certs` makes
    /// in the cluster's folder ([`TestCluster::tls_dir`]); the cluster's HTTP client
    /// trusts that CA alone and its URLs are `https://`.
    pub tls: bool,
    /// With `tls`: the client port requires a client certificate from a clients CA;
    /// the cluster's HTTP client presents `client-harness.pem`.
    pub require_client_cert: bool,
}

/// One node process.
pub struct TestNode {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// A running cluster.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    /// Sends the admin token when auth is on (a request's own `Authorization` wins).
    pub http: reqwest::Client,
    /// The bootstrap admin token, when auth is on.
    pub admin_token: Option<String>,
    /// `https` when the nodes run with TLS, `http` otherwise.
    scheme: &'static str,
    dir: Option<tempfile::TempDir>,
    /// The tmpfs holding the data directories, if [`Tuning::disk_mib`] asked for one.
    disk: Option<PathBuf>,
    passed: bool,
}

/// Mounts a tmpfs of `mib` MiB at `at` (created), for a disk a test can fill.
fn mount_tmpfs(at: &Path, mib: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(at)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={mib}m"))
        .arg("tmpfs")
        .arg(at)
        .status()
        .context("running mount (a disk of its own needs root)")?;
    ensure!(
        status.success(),
        "mounting a tmpfs at {}: {status}",
        at.display()
    );
    Ok(at.to_owned())
}

/// The kv-server binary: `KV_SERVER_BIN`, or beside the test executable's folder.
pub fn server_binary() -> Result<PathBuf> {
    workspace_binary("kv-server", "KV_SERVER_BIN")
}

/// The kvctl binary: `KVCTL_BIN`, or beside the test executable's folder.
pub fn kvctl_binary() -> Result<PathBuf> {
    workspace_binary("kvctl", "KVCTL_BIN")
}

/// A binary of this workspace: `$env_var`, or beside the running executable (a binary
/// such as kv-chaos), or in the profile folder above it (cargo puts test binaries in
/// target/<profile>/deps and binaries in target/<profile>).
fn workspace_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has no folder")?;
    let candidates = [Some(dir.join(name)), dir.parent().map(|p| p.join(name))];
    if let Some(bin) = candidates.into_iter().flatten().find(|b| b.exists()) {
        return Ok(bin);
    }
    bail!(
        "{name} is missing beside {}: build it with `cargo build --workspace --bins` or run `cargo test --workspace`",
        exe.display()
    )
}

/// Runs `kv-server certs` into `dir`: the CA found there (or a new one) and a
/// certificate for each node naming its address.
pub fn make_certs(dir: &Path, nodes: &[(u64, std::net::IpAddr)], clients: &[&str]) -> Result<()> {
    let mut certs = Command::new(server_binary()?);
    certs.arg("certs").arg("--dir").arg(dir);
    for (id, ip) in nodes {
        certs.arg("--node").arg(format!("{id}={ip}"));
    }
    for name in clients {
        certs.arg("--client").arg(name);
    }
    let out = certs.output().context("running kv-server certs")?;
    ensure!(
        out.status.success(),
        "kv-server certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The loopback address of node `id` when nodes have their own addresses.
pub fn node_ip(id: u64) -> std::net::Ipv4Addr {
    // The second byte comes from the process id, so two runs on one machine partition
    // only their own nodes.
    let run = 1 + (std::process::id() % 250) as u8;
    std::net::Ipv4Addr::new(127, run, 0, 10 + id as u8)
}

/// The lowest port the kernel hands out to outgoing connections.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A free port on each of `ips`, in order, below the kernel's ephemeral range: a node
/// restarted on its port must not find it taken by the local end of some connection.
fn free_addrs(ips: &[std::net::IpAddr]) -> Result<Vec<SocketAddr>> {
    use rand::Rng;
    let high = ephemeral_low().unwrap_or(32768).max(12_000);
    let mut rng = rand::thread_rng();
    // Hold every listener until all are chosen, so no port is handed out twice.
    let listeners: Vec<TcpListener> = ips
        .iter()
        .map(|ip| {
            (0..1000)
                .find_map(|_| TcpListener::bind((*ip, rng.gen_range(10_000..high))).ok())
                .with_context(|| format!("no free port on {ip} below {high}"))
        })
        .collect::<Result<_>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(Into::into))
        .collect()
}

impl TestCluster {
    /// Starts `n` nodes with default tuning and waits until every node is ready.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_tuned(n, Tuning::default()).await
    }

    /// Starts `n` nodes with extra configuration and waits until every node is ready.
    pub async fn start_tuned(n: usize, tuning: Tuning) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("quorum-kv-test-")
            .tempdir()?;
        // Two ports (client, raft) per node.
        let ips: Vec<std::net::IpAddr> = (1..=n as u64)
            .flat_map(|id| {
                let ip = if tuning.own_addresses {
                    node_ip(id)
                } else {
                    std::net::Ipv4Addr::LOCALHOST
                };
                [ip.into(), ip.into()]
            })
            .collect();
        let addrs = free_addrs(&ips)?;
        let disk = match tuning.disk_mib {
            Some(mib) => Some(mount_tmpfs(&dir.path().join("disk"), mib)?),
            None => None,
        };
        let data_root = disk.clone().unwrap_or_else(|| dir.path().to_owned());
        let mut members = String::from("members = [\n");
        for i in 0..n {
            writeln!(
                members,
                "  {{ id = {}, client_addr = \"{}\", raft_addr = \"{}\" }},",
                i + 1,
                addrs[2 * i],
                addrs[2 * i + 1]
            )?;
        }
        members.push_str("]\n");
        let admin_token = tuning.auth.then(|| {
            let bytes: [u8; 32] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
        let mut auth = String::new();
        if let Some(token) = &admin_token {
            let file = dir.path().join("admin-token");
            std::fs::write(&file, format!("{token}\n"))?;
            writeln!(
                auth,
                "[auth]\nadmin_token_file = {:?}",
                file.display().to_string()
            )?;
        }
        let tls_dir = dir.path().join("tls");
        let tls_section = |id: u64| {
            let file = |name: &str| tls_dir.join(name).display().to_string();
            let mut section = format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n",
                file(&format!("node{id}.pem")),
                file(&format!("node{id}-key.pem")),
                file("ca.pem"),
            );
            if tuning.require_client_cert {
                section += &format!(
                    "client_ca_file = {:?}\nrequire_client_cert = true\n",
                    file("clients-ca.pem")
                );
            }
            section
        };
        if tuning.tls {
            let certified: Vec<(u64, std::net::IpAddr)> =
                (0..n).map(|i| (i as u64 + 1, addrs[2 * i].ip())).collect();
            let clients: &[&str] = if tuning.require_client_cert {
                &["harness"]
            } else {
                &[]
            };
            make_certs(&tls_dir, &certified, clients)?;
        }
        let mut nodes = vec![];
        for i in 0..n {
            let id = i as u64 + 1;
            let config = dir.path().join(format!("node{id}.toml"));
            let data = data_root.join(format!("node{id}"));
            let own: Vec<&str> = tuning
                .node_lines
                .iter()
                .filter(|(n, _)| *n == id)
                .map(|(_, l)| l.as_str())
                .collect();
            let text = format!(
                "id = {id}\nclient_addr = \"{}\"\nraft_addr = \"{}\"\ndata_dir = \"{}\"\ncluster_secret = \"test-secret\"\n{}\n{members}\n[raft]\nheartbeat_ms = 100\nelection_min_ms = 500\nelection_max_ms = 1000\nlog_segment_mib = 4\n{}\n[limits]\n{}\n{}{auth}",
                addrs[2 * i],
                addrs[2 * i + 1],
                data.display(),
                own.join("\n"),
                tuning.raft.join("\n"),
                tuning.limits.join("\n"),
                if tuning.tls { tls_section(id) } else { String::new() },
            );
            std::fs::write(&config, text)?;
            nodes.push(TestNode {
                id,
                client_addr: addrs[2 * i],
                raft_addr: addrs[2 * i + 1],
                config,
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                paused: false,
            });
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &admin_token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(15))
            // Below the nodes' idle timeout, as kv-client's.
            .pool_idle_timeout(Duration::from_secs(10));
        if tuning.tls {
            let ca = std::fs::read(tls_dir.join("ca.pem"))?;
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
        }
        if tuning.require_client_cert {
            let mut identity = std::fs::read(tls_dir.join("client-harness.pem"))?;
            identity.extend(std::fs::read(tls_dir.join("client-harness-key.pem"))?);
            http = http.identity(reqwest::Identity::from_pem(&identity)?);
        }
        let mut cluster = Self {
            nodes,
            http: http.build()?,
            admin_token,
            scheme: if tuning.tls { "https" } else { "http" },
            dir: Some(dir),
            disk,
            passed: false,
        };
        for id in 1..=n as u64 {
            cluster.spawn(id)?;
        }
        cluster.wait_ready_all().await?;
        Ok(cluster)
    }

    fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        self.spawn_with_env(id, &[])
    }

    fn spawn_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> Result<()> {
        let bin = server_binary()?;
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&node.config)
            .env(
                "RUST_LOG",
                std::env::var("KV_TEST_LOG").unwrap_or_else(|_| "info,openraft=info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        node.child = Some(child);
        Ok(())
    }

    /// Starts a new node that joins this cluster (`join` with the cluster's id, no
    /// `members`) on free loopback addresses, with the first node's other settings. The
    /// leader must still add it (`POST /v1/admin/members`). Returns its id; ids follow
    /// the nodes started before, so none is ever reused. With TLS, the cluster's CA
    /// certifies it first.
    pub async fn add_node(&mut self) -> Result<u64> {
        let addrs = free_addrs(&[std::net::Ipv4Addr::LOCALHOST.into(); 2])?;
        self.add_node_at(addrs[0], addrs[1]).await
    }

    /// As `add_node`, on given addresses: those of a node that was removed, to replace it.
    pub async fn add_node_at(
        &mut self,
        client_addr: SocketAddr,
        raft_addr: SocketAddr,
    ) -> Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        let asked = *self.live().first().context("no live node to ask")?;
        let (_, status) = self.get_json(asked, "/v1/cluster").await?;
        let cluster_id = status["cluster_id"]
            .as_str()
            .context("the cluster has no id yet")?
            .to_owned();
        let addrs = [client_addr, raft_addr];
        let first = &self.nodes[0];
        let template = std::fs::read_to_string(&first.config)?;
        let data_root = template
            .lines()
            .find_map(|l| l.strip_prefix("data_dir = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .map(|d| Path::new(d).parent().map(Path::to_owned))
            .context("the first node's configuration has no data_dir")?
            .context("data_dir has no parent")?;
        if self.scheme == "https" {
            let dir = self.tls_dir().context("the cluster's folder is gone")?;
            make_certs(&dir, &[(id, client_addr.ip())], &[])?;
        }
        let mut text = format!(
            "id = {id}\nclient_addr = \"{}\"\nraft_addr = \"{}\"\ndata_dir = \"{}\"\njoin = \"{cluster_id}\"\n",
            addrs[0],
            addrs[1],
            data_root.join(format!("node{id}")).display(),
        );
        let mut in_members = false;
        for line in template.lines() {
            if line.starts_with("members = [") {
                in_members = true;
            } else if in_members {
                in_members = line.trim() != "]";
            } else if !["id =", "client_addr =", "raft_addr =", "data_dir ="]
                .iter()
                .any(|p| line.starts_with(p))
            {
                // The first node's own certificate files become this node's.
                let line = line
                    .replace("/node1.pem\"", &format!("/node{id}.pem\""))
                    .replace("/node1-key.pem\"", &format!("/node{id}-key.pem\""));
                text.push_str(&line);
                text.push('\n');
            }
        }
        let dir = first.config.parent().context("config folder")?.to_owned();
        let config = dir.join(format!("node{id}.toml"));
        std::fs::write(&config, text)?;
        self.nodes.push(TestNode {
            id,
            client_addr: addrs[0],
            raft_addr: addrs[1],
            config,
            log: dir.join(format!("node{id}.log")),
            child: None,
            paused: false,
        });
        self.spawn(id)?;
        self.wait_serving(id).await?;
        Ok(id)
    }

    /// Node `id`'s own loopback address (both its ports), which firewall rules name.
    pub fn ip(&self, id: u64) -> std::net::IpAddr {
        self.node(id).client_addr.ip()
    }

    /// Node `id`'s client address.
    pub fn client_addr(&self, id: u64) -> SocketAddr {
        self.node(id).client_addr
    }

    /// The process id of node `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// The ids of nodes whose process is running.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// The ids of nodes that are running and not paused.
    pub fn responsive(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Whether node `id` is stopped with SIGSTOP.
    pub fn is_paused(&self, id: u64) -> bool {
        self.node(id).paused
    }

    /// kill -9 node `id` and reap it (a paused node too).
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.paused = false;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` as an operator would: SIGTERM, then waits for it to exit (SIGKILL
    /// after 15 s).
    pub async fn stop(&mut self, id: u64) -> Result<()> {
        self.signal(id, "-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let child = self.node_mut(id).child.as_mut().context("not running")?;
            if child.try_wait()?.is_some() {
                self.node_mut(id).child = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill(id);
                bail!("node {id} did not stop within 15 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a stopped node `id` again on its data.
    pub fn start_again(&mut self, id: u64) -> Result<()> {
        ensure!(self.node(id).child.is_none(), "node {id} is running");
        self.spawn(id)
    }

    /// Stops node `id` with SIGSTOP: it keeps its sockets and state but runs nothing.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        self.signal(id, "-STOP")?;
        self.node_mut(id).paused = true;
        Ok(())
    }

    /// Resumes a paused node with SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<()> {
        if self.node(id).paused {
            self.signal(id, "-CONT")?;
            self.node_mut(id).paused = false;
        }
        Ok(())
    }

    fn signal(&self, id: u64, signal: &str) -> Result<()> {
        let pid = self
            .node(id)
            .child
            .as_ref()
            .with_context(|| format!("node {id} is not running"))?
            .id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// The node that says it leads at the highest term, asking every responsive node
    /// with a short timeout; None when no node says so. Unlike [`Self::leader`] this
    /// does not wait for agreement (a partitioned old leader may still say it leads
    /// at an older term).
    pub async fn leader_now(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.responsive() {
            let ask = self
                .http
                .get(self.url(id, "/v1/cluster"))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            let Ok(r) = ask else {
                continue;
            };
            let Ok((200, v)) = Self::json(r).await else {
                continue;
            };
            if v["state"] == "leader" {
                let term = v["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Starts node `id` again on the same data directory.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        self.kill(id);
        self.spawn(id)
    }

    /// Starts node `id` again on the same data directory with extra environment.
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> Result<()> {
        self.kill(id);
        self.spawn_with_env(id, env)
    }

    /// Starts node `id` again on the same data directory with `KV_CRASH_AT=point`, and
    /// waits until it aborts there (as a kill -9 at that point would stop it).
    pub async fn restart_to_crash_at(&mut self, id: u64, point: &str) -> Result<()> {
        self.kill(id);
        self.spawn_with_env(id, &[("KV_CRASH_AT", point)])?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let node = self.node_mut(id);
            let child = node.child.as_mut().context("the node is not running")?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                ensure!(
                    !status.success(),
                    "node {id} exited cleanly instead of crashing at {point}"
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} never reached crash point {point} within {SETTLE:?}; logs in {}",
                    self.log_dir()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> Result<PathBuf> {
        let dir = self.dir().context("the cluster's folder is gone")?;
        Ok(self
            .disk
            .as_deref()
            .unwrap_or(dir)
            .join(format!("node{id}")))
    }

    /// Fills the cluster's tmpfs with a file until only `free_mib` MiB stay free.
    pub fn fill_disk(&self, free_mib: u64) -> Result<()> {
        let disk = self
            .disk
            .as_ref()
            .context("the cluster has no disk of its own")?;
        let stat = rustix::fs::statvfs(disk)?;
        let free = stat.f_bavail * stat.f_frsize;
        let fill = free.saturating_sub(free_mib << 20);
        let filler = std::fs::File::create(disk.join("filler"))?;
        // Written, not just sized: tmpfs counts only pages that hold data.
        let chunk = vec![0x55u8; 1 << 20];
        let mut w = std::io::BufWriter::new(filler);
        let mut left = fill;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &chunk[..n])?;
            left -= n as u64;
        }
        std::io::Write::flush(&mut w)?;
        Ok(())
    }

    /// Removes what [`Self::fill_disk`] wrote.
    pub fn free_disk(&self) -> Result<()> {
        let disk = self
            .disk
            .as_ref()
            .context("the cluster has no disk of its own")?;
        Ok(std::fs::remove_file(disk.join("filler"))?)
    }

    /// What node `id` has logged so far.
    pub fn log_text(&self, id: u64) -> Result<String> {
        Ok(String::from_utf8_lossy(&std::fs::read(&self.node(id).log)?).into_owned())
    }

    /// `http://client_addr{path}` of node `id` (`https://` with TLS).
    pub fn url(&self, id: u64, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.node(id).client_addr, path)
    }

    /// GET a JSON document; returns status and body (Null when the body is empty).
    pub async fn get_json(&self, id: u64, path: &str) -> Result<(u16, Value)> {
        let r = self.http.get(self.url(id, path)).send().await?;
        Self::json(r).await
    }

    /// PUT a JSON value.
    pub async fn put_json(&self, id: u64, path: &str, body: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .put(self.url(id, path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        Self::json(r).await
    }

    /// DELETE.
    pub async fn delete(&self, id: u64, path: &str) -> Result<(u16, Value)> {
        let r = self.http.delete(self.url(id, path)).send().await?;
        Self::json(r).await
    }

    /// Status and JSON body of a response; a non-JSON body is an error (every answer of
    /// the API, errors included, is JSON).
    pub async fn json(r: reqwest::Response) -> Result<(u16, Value)> {
        let status = r.status().as_u16();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "status {status}: body is not JSON: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, body))
    }

    /// Waits until every live node reports ready.
    pub async fn wait_ready_all(&self) -> Result<()> {
        for id in self.responsive() {
            self.wait_ready(id).await?;
        }
        Ok(())
    }

    /// Waits until node `id` answers HTTP (leader or not).
    pub async fn wait_serving(&self, id: u64) -> Result<()> {
        self.poll(&format!("node {id} serving"), || async move {
            Ok(matches!(self.get_json(id, "/healthz").await, Ok((200, _))))
        })
        .await
    }

    /// Waits until node `id` knows a leader and has applied what it knows committed.
    pub async fn wait_ready(&self, id: u64) -> Result<()> {
        self.poll(&format!("node {id} ready"), || async move {
            Ok(matches!(self.get_json(id, "/readyz").await, Ok((200, _))))
        })
        .await
    }

    /// The leader the live nodes agree on (waits until they do).
    pub async fn leader(&self) -> Result<u64> {
        let found = std::cell::Cell::new(0);
        self.poll("the live nodes agree on a leader", || async {
            let mut seen = vec![];
            for id in self.responsive() {
                match self.get_json(id, "/v1/cluster").await {
                    Ok((200, v)) => seen.push(v["leader_id"].as_u64()),
                    _ => return Ok(false),
                }
            }
            match seen.first() {
                Some(Some(l)) if seen.iter().all(|s| *s == Some(*l)) && self.live().contains(l) => {
                    found.set(*l);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await?;
        Ok(found.get())
    }

    /// A live node other than `not`.
    pub fn other_than(&self, not: u64) -> u64 {
        self.live()
            .into_iter()
            .find(|id| *id != not)
            .expect("another live node")
    }

    /// Polls `check` every 50 ms until it returns true, failing after [`SETTLE`].
    pub async fn poll<F, Fut>(&self, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + SETTLE;
        loop {
            if check().await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "timed out after {SETTLE:?} waiting for {what}; logs in {}",
                    self.log_dir()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The folder holding node configs, logs and data.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// The folder holding the cluster's CA and node certificates when it runs with TLS
    /// (`ca.pem`, `node{ID}.pem`, `node{ID}-key.pem`).
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.dir().map(|d| d.join("tls"))
    }

    /// Marks the scenario as passed: its logs and data are removed on drop. A cluster
    /// dropped without this (a failed `?`, a panic) keeps them for inspection.
    pub fn pass(mut self) {
        self.passed = true;
    }

    fn log_dir(&self) -> String {
        self.dir
            .as_ref()
            .map_or_else(|| "(gone)".into(), |d| d.path().display().to_string())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for id in self.live() {
            self.kill(id);
        }
        if let Some(disk) = self.disk.take() {
            let _ = Command::new("umount").arg(&disk).status();
        }
        if !self.passed || std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test failed: node logs and data kept in {}", kept.display());
            }
        }
    }
}
