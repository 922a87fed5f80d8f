//! Starting and stopping a node.
//!
//! Shutdown order, once the stop signal fires:
//! 1. stop accepting client requests and let in-flight ones finish (they may wait on
//!    raft, which is still running);
//! 2. stop the background tasks (proposer, read confirmer, expiry ticker);
//! 3. `raft.shutdown()`;
//! 4. stop the raft listener;
//! 5. wait for every task, then drop the stores (RocksDB closes; every acknowledged
//!    write was already synced).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_store::typ::{NodeInfo, Raft};
use openraft::error::{InitializeError, RaftError};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::cluster_id::ClusterId;
use crate::config::NodeConfig;
use crate::disk::DiskGuard;
use crate::http::{self, App};
use crate::proposer::Proposer;
use crate::raft_network::{self, Network};
use crate::reads::ReadBarrier;
use crate::tls::Tls;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("opening the store: {0}")]
    Store(#[from] kv_store::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("restore: {0}")]
    Restore(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

fn raft_config(config: &NodeConfig) -> Result<openraft::Config, NodeError> {
    let r = &config.raft;
    openraft::Config {
        cluster_name: "quorum-kv".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_min_ms,
        election_timeout_max: r.election_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
        purge_batch_size: r.purge_batch_size,
        // Each entry is a batch of up to 4 MiB of values; keep AppendEntries bounded.
        max_payload_entries: 64,
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))
}

/// Files a node keeps open besides client connections: RocksDB's, the raft log's, raft
/// connections, refusals being written.
const FILES_BESIDES_CLIENTS: u64 = 512;

/// Raises the soft limit on open files to the hard one, and warns when even that is
/// below what `max_connections` needs: past it, accepting fails before the cap answers.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "raising the open-file limit");
        }
    }
    let needed = max_connections as u64 + FILES_BESIDES_CLIENTS;
    if let Some(current) = getrlimit(Resource::Nofile).current {
        if current < needed {
            tracing::warn!(
                current,
                needed,
                "the open-file limit is below limits.max_connections plus what the node \
                 keeps open: raise it (ulimit -n) or lower max_connections"
            );
        }
    }
}

/// Runs a node until `shutdown` completes, then stops it in order.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    config.validate()?;
    // Before anything is opened, so a missing or wrong file stops the node at once.
    let tls = config.tls.as_ref().map(Tls::load).transpose()?;
    raise_open_file_limit(config.limits.max_connections);
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    let stores = kv_store::open_with(&config.data_dir, config.raft.log_segment_mib << 20)?;
    let cluster = ClusterId::load(&config.data_dir).map_err(io("reading the cluster id"))?;
    if let Some(join) = &config.join {
        // Before raft runs, so this node never adopts the id of a peer of another cluster.
        cluster.join(join).map_err(io("joining"))?;
    }
    // Connections to peers leave from this node's own address, so address-based
    // firewall rules (the chaos suite's partitions) see which node is talking.
    let outgoing = Some(config.raft_addr.ip()).filter(|ip| !ip.is_unspecified());
    let secret = config.cluster_secret()?;
    if secret.is_none() {
        tracing::warn!(
            raft = %config.raft_addr,
            "no cluster secret: the raft port accepts any connection that reaches it"
        );
    }
    let admin_token = config.auth.admin_token()?;
    if config.tls.is_none() && !config.raft_addr.ip().is_loopback() {
        tracing::warn!(
            raft = %config.raft_addr,
            "the raft port is not loopback and TLS is off: raft traffic and the cluster \
             secret cross the network in clear text; add a [tls] section"
        );
    }
    if admin_token.is_some() && config.tls.is_none() && !config.client_addr.ip().is_loopback() {
        tracing::warn!(
            client = %config.client_addr,
            "auth is on without TLS: tokens cross the network in clear text; add a [tls] section"
        );
    }
    if admin_token.is_none() {
        tracing::warn!(
            client = %config.client_addr,
            "auth is off: anyone who reaches the client port may read and write every key"
        );
        let tokens = stores.reader.tokens().len();
        if tokens > 0 {
            tracing::warn!(
                tokens,
                "the cluster has tokens but auth is off on this node: it serves requests \
                 without checking them; give every node the same [auth] section"
            );
        }
    }
    let network = Network::new(
        cluster.clone(),
        secret.clone(),
        outgoing,
        tls.as_ref().map(|t| t.raft_dialer.clone()),
    );
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        network,
        stores.log,
        stores.state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let raft_listener = TcpListener::bind(config.raft_addr)
        .await
        .map_err(io(format!("binding {}", config.raft_addr)))?;
    let client_listener = TcpListener::bind(config.client_addr)
        .await
        .map_err(io(format!("binding {}", config.client_addr)))?;

    let tracker = TaskTracker::new();
    let tasks_stop = CancellationToken::new();
    let client_stop = CancellationToken::new();
    let raft_stop = CancellationToken::new();
    // A peer's cluster id is adopted only until raft is initialized (see cluster_id).
    if raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        cluster.stop_adopting();
    } else {
        let (raft, cluster, stop) = (raft.clone(), cluster.clone(), tasks_stop.clone());
        tracker.spawn(async move {
            let wait = raft.wait(None);
            let initialized = wait.metrics(
                |m| m.last_log_index.is_some() || m.vote != Default::default(),
                "raft initialized",
            );
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = initialized => cluster.stop_adopting(),
            }
        });
    }

    let clock = Clock::new(config.clock_offset_ms);
    let limits = config.limits.clone();

    let quiet = crate::quiet::Quiet::default();
    let proposer = Proposer::start(
        raft.clone(),
        clock,
        DiskGuard::new(
            config.data_dir.clone(),
            limits.min_free_disk_mib << 20,
            kv_core::Limits {
                max_data_bytes: limits.max_data_bytes,
                max_records: limits.max_records,
            },
        ),
        &limits,
        quiet.clone(),
        &tracker,
        tasks_stop.clone(),
    );
    let reads = ReadBarrier::start(
        raft.clone(),
        Duration::from_millis(limits.read_timeout_ms),
        quiet.clone(),
        &tracker,
        tasks_stop.clone(),
    );
    tracker.spawn(crate::expiry::run(
        raft.clone(),
        stores.reader.clone(),
        proposer.clone(),
        clock,
        tasks_stop.clone(),
    ));

    crate::metrics::handle();
    tracker.spawn(crate::metrics::upkeep(tasks_stop.clone()));
    tracker.spawn(snapshot_when_due(
        raft.clone(),
        config.raft.snapshot_every,
        tasks_stop.clone(),
    ));
    let snapshot_progress = Arc::new(raft_network::SnapshotProgress::default());
    let app = Arc::new(App {
        id: config.id,
        raft: raft.clone(),
        reader: stores.reader,
        proposer,
        reads,
        clock,
        client: forwarding_client(&config, tls.as_ref(), outgoing)?,
        scheme: if tls.is_some() { "https" } else { "http" },
        limits,
        digest_running: Arc::new(tokio::sync::Mutex::new(())),
        // Half the leader's per-address cap at most (alike configured), so its forwards
        // leave room for clients from this node's address.
        forwards: tokio::sync::Semaphore::new(
            (config.limits.max_connections_per_ip / 2).clamp(1, http::MAX_FORWARDS),
        ),
        auth: admin_token.as_deref().map(http::Auth::new),
        snapshot_progress: snapshot_progress.clone(),
        cluster_id: cluster.clone(),
        membership: Arc::default(),
        quiet,
        timing: config.raft.clone(),
    });
    tracker.spawn(http::finish_joint_configurations(
        app.clone(),
        tasks_stop.clone(),
    ));

    let raft_server = tokio::spawn(raft_network::serve(
        raft_listener,
        raft_network::Receiver::new(
            raft.clone(),
            cluster.clone(),
            stores.snapshots,
            snapshot_progress,
        ),
        secret,
        tls.as_ref().map(|t| t.raft_listener.clone()),
        tracker.clone(),
        raft_stop.clone(),
    ));
    let connection_limits = http::ConnectionLimits {
        max_connections: config.limits.max_connections,
        max_connections_per_ip: config.limits.max_connections_per_ip,
        idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
    };
    let client_server = tokio::spawn(http::serve(
        client_listener,
        http::router(app),
        connection_limits,
        tls.as_ref().map(|t| t.client_port.clone()),
        client_stop.clone(),
    ));

    bootstrap(&raft, &cluster, &config).await?;
    tracing::info!(id = config.id, client = %config.client_addr, raft = %config.raft_addr, "node started");

    shutdown.await;
    tracing::info!("stopping");
    client_stop.cancel();
    if let Err(e) = client_server.await {
        tracing::warn!(error = %e, "client listener task failed");
    }
    tasks_stop.cancel();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    raft_stop.cancel();
    if let Err(e) = raft_server.await {
        tracing::warn!(error = %e, "raft listener task failed");
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// The process's one HTTP client, which forwards requests to the leader (over TLS with
/// `tls`, trusting the cluster CA alone and presenting this node's certificate).
/// openraft weighs `snapshot_every` only as entries are applied, and not while a build
/// runs: a build that ends after the last write leaves up to as many entries again
/// unsnapshotted, and their log unpurged, until the next write. Looks again every second
/// (openraft ignores the trigger while a build runs).
async fn snapshot_when_due(raft: Raft, every: u64, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (applied, snapshot) = {
            let m = raft.metrics().borrow().clone();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        let since = applied.unwrap_or(0).saturating_sub(snapshot.unwrap_or(0));
        if applied.is_some() && since >= every && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

fn forwarding_client(
    config: &NodeConfig,
    tls: Option<&Tls>,
    outgoing: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, NodeError> {
    let builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        // Half the idle timeout the leader (configured alike) closes connections after,
        // so a pooled connection is not reused just as the leader closes it.
        .pool_idle_timeout(Duration::from_millis(config.limits.idle_timeout_ms / 2))
        // A forwarded request goes to the leader's client address and nowhere else.
        .redirect(reqwest::redirect::Policy::none())
        .local_address(outgoing);
    let builder = match tls {
        Some(tls) => tls.forwarding(builder)?,
        None => builder,
    };
    Ok(builder.build()?)
}

/// A fresh cluster initializes itself once: the lowest-id member creates the cluster id
/// and proposes the initial membership. On an initialized node this does nothing.
async fn bootstrap(raft: &Raft, cluster: &ClusterId, config: &NodeConfig) -> Result<(), NodeError> {
    if config.join.is_some() || config.id != config.bootstrapper() {
        return Ok(());
    }
    if raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        return Ok(());
    }
    // An id adopted from a peer proves the cluster exists: this node was wiped, and
    // initializing it again could make a second cluster under the same id.
    if cluster.adopted() {
        tracing::warn!("not bootstrapping: a peer presented this cluster's id");
        return Ok(());
    }
    // Before raft is initialized, so no peer ever hears from this cluster without its id.
    let id = cluster
        .create_if_missing()
        .map_err(io("creating the cluster id"))?;
    tracing::info!(cluster_id = %id, "bootstrapping");
    let members: BTreeMap<u64, NodeInfo> = config
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                NodeInfo {
                    client_addr: m.client_addr.to_string(),
                    raft_addr: m.raft_addr.to_string(),
                },
            )
        })
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!("initialized a fresh cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(NodeError::Raft(e.to_string())),
    }
}

/// Seeds `config`'s empty data directory from the backup file `from` as a one-node
/// cluster of `config.id` with a new cluster id, so the restored cluster is never taken
/// for the one the backup came from. Returns a JSON summary.
pub fn restore(config: &NodeConfig, from: &std::path::Path) -> Result<String, NodeError> {
    config.validate()?;
    let dir = &config.data_dir;
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    if !empty {
        return Err(NodeError::Restore(format!(
            "{} is not empty: restore seeds an empty data directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let node = NodeInfo {
        client_addr: config.client_addr.to_string(),
        raft_addr: config.raft_addr.to_string(),
    };
    let meta = kv_store::restore(dir, from, config.id, node)?;
    let cluster = ClusterId::load(dir).map_err(io("reading the cluster id"))?;
    let cluster_id = cluster
        .create_if_missing()
        .map_err(io("creating the cluster id"))?;
    Ok(serde_json::json!({
        "restored": from.display().to_string(),
        "data_dir": dir.display().to_string(),
        "index": meta.last_log_id.map(|l| l.index),
        "node_id": config.id,
        "cluster_id": cluster_id,
    })
    .to_string())
}
