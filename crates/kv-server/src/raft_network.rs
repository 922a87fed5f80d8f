//! Raft RPCs between nodes: postcard frames over one TCP connection per peer, inside
//! mutual TLS when the node has a `[tls]` configuration.
//!
//! Raft traffic is small, frequent and always between members, so it skips HTTP: one
//! write and usually one read per RPC, no headers to encode or parse, and no connection
//! task between openraft's replication task and the socket. The protocol:
//!
//! - With TLS, each connection opens with a TLS handshake in which both sides present a
//!   certificate from the cluster CA (see [`crate::tls`]); the dialer names the listener
//!   by the IP address it dials. The handshake shares the hello's deadline and slot
//!   below, a failed one is logged with the peer's address, and everything after it,
//!   the hello included, travels inside: the cluster secret stays a second factor.
//! - Every frame is a big-endian `u32` length, then that many bytes (at most
//!   [`MAX_FRAME`]).
//! - The connecting node's first frame is [`HELLO`], its cluster id (empty while it has
//!   none, see [`crate::cluster_id`]), a newline, and the cluster secret (empty when none
//!   is set), within [`HELLO_TIMEOUT`]; at most [`MAX_HANDSHAKES`] connections
//!   ([`MAX_HANDSHAKES_PER_IP`] from one address) may be that far at once, and more are
//!   closed as they arrive. The listener answers [`OK`] and its own cluster id, or
//!   [`REJECTED`] with a reason and closes the connection: for a wrong secret, or a node
//!   of another cluster.
//!   The connecting node refuses a listener of another cluster in turn.
//! - The connecting node then names the node it means to reach: an [`IDENTIFY`] request
//!   (id 0) carrying that node id. A listener of another id answers [`REJECTED`] with a
//!   reason, and the connecting node drops the connection: a new node on a removed
//!   node's address, or the removed node still running there, is never taken for the
//!   other (whose acknowledgements would then count toward commits). A listener of an
//!   older version answers [`BAD_REQUEST`] and is trusted as before.
//! - Then each request is one frame: a kind byte ([`APPEND`], [`VOTE`], [`SNAPSHOT`]),
//!   the request's id (big-endian `u64`, unique per sending process) and the postcard
//!   encoding of openraft's request. Each answer is one frame: [`OK`], the request's id
//!   and the postcard encoding of the whole `Result` the receiving raft returned (so
//!   remote raft errors reach the sender's openraft as `RemoteError`), or [`BAD_REQUEST`],
//!   the id (0 if the request was too short to carry one) and a reason. One request at a
//!   time per connection.
//!
//! openraft drops an RPC's future when its own deadline fires, at any await point. So a
//! connection belongs to one exchange at a time: it is taken off the client for the
//! exchange and put back only once the whole answer was read and its id matched, and a
//! dropped exchange drops (closes) its connection. An answer whose id is not its
//! request's closes the connection and fails the RPC; it is never believed.
//!
//! openraft makes a new client for every linearizable-read round and every election, so
//! idle connections go back to a small pool per peer (id and address) when a client is dropped,
//! and the next client takes one from there instead of connecting.
//!
//! Snapshot chunks are received here into a file rather than by openraft: the whole
//! snapshot is made durable before raft learns of it, because raft purges the log it
//! covers at once (see [`kv_store::SnapshotStore`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_store::typ::{NodeId, NodeInfo, Raft, SnapshotMeta, TypeConfig};
use kv_store::{crash, Incoming, SnapshotStore};

use crate::cluster_id::{ClusterId, Verdict};
use crate::slots::{Slot, Slots};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Snapshot, SnapshotSegmentId, StorageError, StorageIOError};
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First bytes of the connecting node's first frame; the cluster secret follows.
pub const HELLO: &[u8] = b"quorum-kv-raft/2\n";
/// Request kinds: the first byte of a request frame.
pub const APPEND: u8 = 1;
pub const VOTE: u8 = 2;
pub const SNAPSHOT: u8 = 3;
/// The node id the connecting node means to reach, once per connection.
pub const IDENTIFY: u8 = 4;
/// Answer kinds: the first byte of an answer frame.
pub const OK: u8 = 0;
pub const BAD_REQUEST: u8 = 1;
pub const REJECTED: u8 = 2;

/// Largest frame: snapshot chunks (1 MiB) and AppendEntries batches of up to
/// `max_payload_entries` entries (each at most 4 MiB of values) fit with room to spare.
pub const MAX_FRAME: usize = 512 * 1024 * 1024;

/// Largest hello: the protocol line and a cluster secret.
const MAX_HELLO: usize = 4096;
/// How long a new connection may take to present its hello before it is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections presenting their hello at once, in all and from one address; more are
/// closed as soon as they are accepted, so strangers can hold neither much memory nor
/// every slot (members present their hello within milliseconds).
const MAX_HANDSHAKES: usize = 64;
const MAX_HANDSHAKES_PER_IP: usize = 8;

/// Bytes of a request or answer frame before its body: the kind and the request id.
const FRAME_HEAD: usize = 1 + 8;

/// Bytes buffered for reading answers; most answers fit in one read.
const READ_BUFFER: usize = 16 * 1024;
/// Idle connections kept per peer address.
const IDLE_PER_PEER: usize = 8;

/// Answers whose id was not their request's, since this process started.
static MISMATCHED_ANSWERS: AtomicU64 = AtomicU64::new(0);

/// How many raft answers this node received whose id did not match the request it sent
/// (each one closed its connection and failed its RPC). Always 0 unless a peer or the
/// transport is broken.
pub fn mismatched_answers() -> u64 {
    MISMATCHED_ANSWERS.load(Ordering::Relaxed)
}

/// An AppendEntries frame above this is "large": it takes long enough to encode, send and
/// sync that it can outlast openraft's one-heartbeat deadline.
const LARGE_APPEND: usize = 1024 * 1024;

static LARGE_APPENDS_SENT: AtomicU64 = AtomicU64::new(0);
static APPEND_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static ELECTIONS_STARTED: AtomicU64 = AtomicU64::new(0);
/// The highest term this node has asked votes for.
static LAST_VOTE_TERM: AtomicU64 = AtomicU64::new(0);

/// AppendEntries requests over 1 MiB (as framed) this node has sent since it started.
/// The chaos suite reads it to show its runs exercise the large-frame path.
pub fn large_appends_sent() -> u64 {
    LARGE_APPENDS_SENT.load(Ordering::Relaxed)
}

/// AppendEntries requests that got no answer within their deadline since this node
/// started (each one closed its connection).
pub fn append_timeouts() -> u64 {
    APPEND_TIMEOUTS.load(Ordering::Relaxed)
}

/// Elections this node started since it started: the terms for which it sent vote
/// requests (one election asks every peer, and may ask one again, at one term).
pub fn elections_started() -> u64 {
    ELECTIONS_STARTED.load(Ordering::Relaxed)
}

/// Test only: `KV_SLOW_SNAPSHOT_CHUNKS_MS=<ms>` delays the answer to every snapshot
/// chunk but the last, so a test can make a transfer outlast the election timeout.
fn test_chunk_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("KV_SLOW_SNAPSHOT_CHUNKS_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}

/// openraft's `InstallSnapshotRequest` as it is framed: the same fields in the same
/// order, so the same postcard bytes, but with the data written and read as one byte
/// string instead of one byte at a time.
#[derive(Serialize)]
struct ChunkRef<'a> {
    vote: &'a openraft::Vote<NodeId>,
    meta: &'a SnapshotMeta,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
    done: bool,
}

/// A received [`ChunkRef`].
#[derive(serde::Deserialize)]
struct Chunk {
    vote: openraft::Vote<NodeId>,
    meta: SnapshotMeta,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    done: bool,
}

/// One raft connection, plain or inside TLS as the dialing or the accepting side.
enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Server(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Server(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Client(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Server(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Server(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Conn = BufReader<Stream>;

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Fills in the length of `frame`, whose first 4 bytes were reserved for it, and sends it
/// in one write, flushed (TLS holds back what it was not told to flush).
async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    frame: &mut [u8],
) -> Result<(), FrameError> {
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    stream.write_all(frame).await?;
    stream.flush().await?;
    Ok(())
}

/// A frame with 4 bytes reserved for the length, then `kind`.
fn frame_with(kind: u8, capacity: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + capacity);
    frame.extend_from_slice(&[0, 0, 0, 0, kind]);
    frame
}

/// A request or answer frame: 4 bytes reserved for the length, `kind`, then `id`.
fn frame_for(kind: u8, id: u64, capacity: usize) -> Vec<u8> {
    let mut frame = frame_with(kind, 8 + capacity);
    frame.extend_from_slice(&id.to_be_bytes());
    frame
}

/// A refusal (no id) or bad-request frame: `kind`, then the reason.
fn reason_frame(mut frame: Vec<u8>, reason: &str) -> Vec<u8> {
    frame.extend_from_slice(reason.as_bytes());
    frame
}

/// The kind, id and body of a request or answer frame, if it is long enough to have them.
fn split_frame(frame: &[u8]) -> Option<(u8, u64, &[u8])> {
    let (&kind, rest) = frame.split_first()?;
    let (id, body) = rest.split_first_chunk::<8>()?;
    Some((kind, u64::from_be_bytes(*id), body))
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream before its
/// first byte.
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    // Grown as the bytes arrive, so a length alone never makes this node allocate it.
    let mut frame = Vec::with_capacity(len.min(1 << 20));
    let read = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await?;
    if read < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(frame))
}

/// Makes connections to peers, and keeps the idle ones.
#[derive(Clone)]
pub struct Network {
    secret: Arc<str>,
    cluster: ClusterId,
    local_address: Option<IpAddr>,
    tls: Option<TlsConnector>,
    idle: Arc<Mutex<HashMap<String, Vec<Conn>>>>,
    next_id: Arc<AtomicU64>,
}

impl Network {
    /// A network that presents `cluster`'s id and `secret`, if set, connects from
    /// `local_address`, if set (so address-based firewall rules see which node is
    /// talking), and over TLS with `tls`.
    pub fn new(
        cluster: ClusterId,
        secret: Option<String>,
        local_address: Option<IpAddr>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            secret: secret.unwrap_or_default().into(),
            cluster,
            local_address,
            tls: tls.map(TlsConnector::from),
            idle: Arc::default(),
            // Ids start at 1: 0 marks an answer to a request too short to carry one.
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Conn>>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_idle(&self, peer: &str) -> Option<Conn> {
        self.idle().get_mut(peer)?.pop()
    }

    fn put_idle(&self, peer: &str, conn: Conn) {
        let mut idle = self.idle();
        let conns = idle.entry(peer.to_owned()).or_default();
        if conns.len() < IDLE_PER_PEER {
            conns.push(conn);
        }
    }
}

/// The way to one peer: a connection kept between exchanges (taken from the idle ones or
/// opened on first use), given back to the pool when the client is dropped. It holds a
/// connection only while no exchange is in flight on it.
pub struct Peer {
    target: NodeId,
    addr: String,
    /// The idle pool's key: a connection identified for one node is never lent to
    /// another node on the same address.
    pool_key: String,
    network: Network,
    conn: Option<Conn>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.network.put_idle(&self.pool_key, conn);
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            target,
            addr: node.raft_addr.clone(),
            pool_key: format!("{target}@{}", node.raft_addr),
            network: self.clone(),
            conn: None,
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, E>>;

/// Why one RPC attempt failed before an answer was decoded.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer refused the connection: {0}")]
    Rejected(String),
    #[error("{0}")]
    OtherCluster(String),
    #[error("the peer could not decode the request: {0}")]
    BadRequest(String),
    #[error("answer of unknown kind {0}")]
    UnknownAnswer(u8),
    #[error("answer to request {got} where the answer to request {sent} was due")]
    Mismatch { sent: u64, got: u64 },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl Peer {
    async fn connect(&self) -> Result<Conn, CallError> {
        let connect_error = |source| CallError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let addr: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(connect_error)?
            .next()
            .ok_or_else(|| connect_error(std::io::Error::other("no address")))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(connect_error)?;
        if let Some(ip) = self.network.local_address {
            socket.bind(SocketAddr::new(ip, 0)).map_err(connect_error)?;
        }
        socket.set_nodelay(true).map_err(connect_error)?;
        let tcp = socket.connect(addr).await.map_err(connect_error)?;
        let mut stream = match &self.network.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| CallError::Tls {
                        addr: self.addr.clone(),
                        source,
                    })?;
                Stream::Client(Box::new(tls))
            }
        };
        let cluster = self.network.cluster.get();
        let mut hello = Vec::with_capacity(64 + self.network.secret.len());
        hello.extend_from_slice(&[0; 4]);
        hello.extend_from_slice(HELLO);
        hello.extend_from_slice(cluster.as_bytes());
        hello.push(b'\n');
        hello.extend_from_slice(self.network.secret.as_bytes());
        write_frame(&mut stream, &mut hello).await?;
        let mut conn = BufReader::with_capacity(READ_BUFFER, stream);
        let answer = read_frame(&mut conn, MAX_HELLO)
            .await?
            .ok_or(CallError::Closed)?;
        match answer.split_first() {
            Some((&OK, theirs)) => {
                let theirs = String::from_utf8_lossy(theirs);
                match self.network.cluster.meet(&theirs) {
                    Ok(Verdict::Accept) => self.identify(conn).await,
                    Ok(Verdict::OtherCluster { ours, theirs }) => {
                        let reason = other_cluster(self.target, &ours, &theirs);
                        tracing::error!("refused to talk to a peer: {reason}");
                        Err(CallError::OtherCluster(reason))
                    }
                    Err(e) => Err(CallError::Frame(e.into())),
                }
            }
            Some((&REJECTED, reason)) => Err(CallError::Rejected(
                String::from_utf8_lossy(reason).into_owned(),
            )),
            Some((&kind, _)) => Err(CallError::UnknownAnswer(kind)),
            None => Err(CallError::Closed),
        }
    }

    /// Names the node this connection is meant for; see the module's protocol notes.
    async fn identify(&self, mut conn: Conn) -> Result<Conn, CallError> {
        let mut frame = frame_for(IDENTIFY, 0, 8);
        frame.extend_from_slice(&self.target.to_be_bytes());
        write_frame(conn.get_mut(), &mut frame).await?;
        let answer = read_frame(&mut conn, MAX_HELLO)
            .await?
            .ok_or(CallError::Closed)?;
        match split_frame(&answer) {
            Some((OK, 0, _)) => Ok(conn),
            // A node of an older version, which cannot say who it is.
            Some((BAD_REQUEST, 0, _)) => Ok(conn),
            Some((REJECTED, 0, reason)) => {
                let reason = String::from_utf8_lossy(reason).into_owned();
                tracing::error!(
                    target = self.target,
                    addr = %self.addr,
                    "refused to replicate to the node at this address: {reason}"
                );
                Err(CallError::Rejected(reason))
            }
            Some((kind, _, _)) => Err(CallError::UnknownAnswer(kind)),
            None => Err(CallError::Closed),
        }
    }

    /// Sends request `id` and reads its answer's body, on this client's connection, an
    /// idle one, or a new one. The connection is held by this future alone until the
    /// answer is in: if the future is dropped, so is the connection. A kept connection
    /// may have been closed by the peer since (it restarted, say): if it fails, the
    /// request goes once more on a new connection. Raft RPCs may be repeated, so a
    /// request the peer did see is no harm.
    async fn exchange(&mut self, id: u64, frame: &mut [u8]) -> Result<Vec<u8>, CallError> {
        let kept = self
            .conn
            .take()
            .or_else(|| self.network.take_idle(&self.pool_key));
        if let Some(mut conn) = kept {
            match send(&mut conn, id, frame).await {
                Err(CallError::Frame(_) | CallError::Closed) => {}
                Ok(answer) => {
                    self.conn = Some(conn);
                    return Ok(answer);
                }
                Err(e) => return Err(e),
            }
        }
        let mut conn = self.connect().await?;
        let answer = send(&mut conn, id, frame).await?;
        self.conn = Some(conn);
        Ok(answer)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // openraft's deadline started before this call; ours starts before the encoding,
        // so it is the earlier of the two and the exchange fails on our terms.
        let deadline = Instant::now() + option.soft_ttl();
        let id = self.network.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = postcard::to_io(req, frame_for(kind, id, 256))
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if kind == APPEND && frame.len() > LARGE_APPEND {
            LARGE_APPENDS_SENT.fetch_add(1, Ordering::Relaxed);
        }
        let answer = match tokio::time::timeout_at(deadline, self.exchange(id, &mut frame)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                return Err(match e {
                    // Unreachable makes openraft back off instead of retrying at once: a
                    // peer that is down or refuses us will not change its mind in a moment.
                    CallError::Connect { .. }
                    | CallError::Tls { .. }
                    | CallError::Rejected(_)
                    | CallError::OtherCluster(_) => RPCError::Unreachable(Unreachable::new(&e)),
                    e => RPCError::Network(NetworkError::new(&e)),
                });
            }
            Err(_) => {
                if kind == APPEND {
                    APPEND_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                }
                let e = CallError::Timeout(option.soft_ttl());
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let result: Result<Resp, E> =
            postcard::from_bytes(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Request `id` and its answer's body on `conn`. An answer to another request fails the
/// exchange (and so closes `conn`, which its caller then drops).
async fn send(conn: &mut Conn, id: u64, frame: &mut [u8]) -> Result<Vec<u8>, CallError> {
    write_frame(conn.get_mut(), frame).await?;
    let mut answer = read_frame(conn, MAX_FRAME)
        .await?
        .ok_or(CallError::Closed)?;
    let Some((kind, got, body)) = split_frame(&answer) else {
        return Err(CallError::Closed);
    };
    if got != id {
        MISMATCHED_ANSWERS.fetch_add(1, Ordering::Relaxed);
        tracing::error!(sent = id, got, "raft answer does not match its request");
        return Err(CallError::Mismatch { sent: id, got });
    }
    let reason = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    match kind {
        OK => {
            answer.drain(..FRAME_HEAD);
            Ok(answer)
        }
        BAD_REQUEST => Err(CallError::BadRequest(reason(body))),
        kind => Err(CallError::UnknownAnswer(kind)),
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call(APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let chunk = ChunkRef {
            vote: &rpc.vote,
            meta: &rpc.meta,
            offset: rpc.offset,
            data: &rpc.data,
            done: rpc.done,
        };
        self.call(SNAPSHOT, &chunk, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        let term = rpc.vote.leader_id().get_term();
        if LAST_VOTE_TERM.fetch_max(term, Ordering::Relaxed) < term {
            ELECTIONS_STARTED.fetch_add(1, Ordering::Relaxed);
        }
        self.call(VOTE, &rpc, &option).await
    }
}

/// Why a peer of another cluster is refused, in a node's log and the refusal frame.
fn other_cluster(peer: impl std::fmt::Display, ours: &str, theirs: &str) -> String {
    format!(
        "node {peer} belongs to another cluster: its cluster id is {theirs}, this node's is \
         {ours} (a data directory or address of another cluster reused?)"
    )
}

/// How far a snapshot being received has come, for readiness and metrics.
#[derive(Debug, Default)]
pub struct SnapshotProgress(std::sync::Mutex<Option<(u64, std::time::Instant)>>);

/// A transfer that sent nothing for this long is no longer in progress.
const SNAPSHOT_STALLED: std::time::Duration = std::time::Duration::from_secs(10);

impl SnapshotProgress {
    fn set(&self, bytes: Option<u64>) {
        let now = std::time::Instant::now();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = bytes.map(|b| (b, now));
    }

    /// Bytes received of a snapshot being received or installed, if one is.
    pub fn receiving(&self) -> Option<u64> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .filter(|(_, at)| at.elapsed() < SNAPSHOT_STALLED)
            .map(|(bytes, _)| bytes)
    }
}

/// What the listener serves with: the raft, this node's cluster id, and where received
/// snapshots are stored.
#[derive(Clone)]
pub struct Receiver {
    raft: Raft,
    cluster: ClusterId,
    snapshots: SnapshotStore,
    /// The transfer in progress, shared with the HTTP layer.
    progress: Arc<SnapshotProgress>,
    /// The snapshot being received, chunk by chunk; one at a time per node, as the leader
    /// sends one at a time. Also the id and size of the last one received whole, so a
    /// resent last chunk (its answer lost to a timeout) is not taken for a new transfer.
    receiving: Arc<tokio::sync::Mutex<Reassembly>>,
}

#[derive(Default)]
struct Reassembly {
    current: Option<Incoming>,
    completed: Option<(String, u64)>,
}

impl Receiver {
    /// The answer to an [`IDENTIFY`] request: [`OK`] if `body` names this node.
    fn identify(&self, id: u64, body: &[u8]) -> Vec<u8> {
        let me = self.raft.metrics().borrow().id;
        match body.try_into().map(u64::from_be_bytes) {
            Ok(meant) if meant == me => frame_for(OK, id, 0),
            Ok(meant) => {
                let reason = format!(
                    "this is node {me}, not node {meant}: the membership names another node at \
                     this address"
                );
                tracing::warn!("refused a raft connection: {reason}");
                reason_frame(frame_for(REJECTED, id, reason.len()), &reason)
            }
            Err(_) => reason_frame(frame_for(BAD_REQUEST, id, 32), "identify needs a node id"),
        }
    }

    /// A receiver for `raft` in cluster `cluster`, storing received snapshots in
    /// `snapshots`.
    pub fn new(
        raft: Raft,
        cluster: ClusterId,
        snapshots: SnapshotStore,
        progress: Arc<SnapshotProgress>,
    ) -> Self {
        Self {
            raft,
            cluster,
            snapshots,
            progress,
            receiving: Arc::default(),
        }
    }

    /// Tells raft that the leader of `vote` was heard from, as an empty AppendEntries
    /// that claims nothing about the log would (no previous entry, no commit index):
    /// raft restarts its election timer, or answers with the higher vote it holds.
    async fn keep_alive(
        &self,
        vote: openraft::Vote<NodeId>,
    ) -> Result<Option<openraft::Vote<NodeId>>, RaftError<NodeId, InstallSnapshotError>> {
        let heard = AppendEntriesRequest {
            vote,
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        };
        match self.raft.append_entries(heard).await {
            Ok(AppendEntriesResponse::HigherVote(higher)) => Ok(Some(higher)),
            Ok(_) => Ok(None),
            Err(RaftError::Fatal(e)) => Err(RaftError::Fatal(e)),
            Err(RaftError::APIError(never)) => match never {},
        }
    }

    /// One snapshot chunk: kept until the last one, then the whole snapshot is stored
    /// durably and only then handed to raft to install.
    async fn snapshot_chunk(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let fatal = |e: openraft::error::Fatal<NodeId>| RaftError::Fatal(e);
        let (vote, committed) = self
            .raft
            .with_raft_state(|st| (*st.vote_ref(), st.committed))
            .await
            .map_err(fatal)?;
        // A stale leader's snapshot is refused before it is buffered, as openraft does.
        // Votes are partially ordered: one that is not at least ours is refused.
        let at_least_ours = matches!(
            req.vote.partial_cmp(&vote),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        );
        if !at_least_ours {
            return Ok(InstallSnapshotResponse { vote });
        }
        // A chunk is word from the leader as much as a heartbeat is, but openraft 0.9
        // sends no heartbeats to a follower while a snapshot to it is in flight, and
        // chunks reassembled here never reach raft: without this, a transfer longer than
        // the election timeout makes the follower campaign, which restarts the transfer.
        if let Some(higher) = self.keep_alive(req.vote).await? {
            return Ok(InstallSnapshotResponse { vote: higher });
        }
        // raft would not install what it already has committed; nothing to receive.
        if req.meta.last_log_id <= committed {
            return Ok(InstallSnapshotResponse { vote });
        }
        let mut guard = self.receiving.lock().await;
        let end = req.offset.saturating_add(req.data.len() as u64);
        if guard.completed == Some((req.meta.snapshot_id.clone(), end)) && req.done {
            return Ok(InstallSnapshotResponse { vote });
        }
        let mismatch = |expect: u64| {
            RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: req.meta.snapshot_id.clone(),
                    offset: expect,
                },
                got: SnapshotSegmentId {
                    id: req.meta.snapshot_id.clone(),
                    offset: req.offset,
                },
            }))
        };
        let storage = |e: kv_store::StoreError| {
            let io = StorageIOError::write_snapshot(Some(req.meta.signature()), &e);
            fatal(openraft::error::Fatal::StorageError(StorageError::from(io)))
        };
        let same = guard
            .current
            .as_ref()
            .is_some_and(|r| r.meta().snapshot_id == req.meta.snapshot_id);
        if !same && req.offset != 0 {
            return Err(mismatch(0));
        }
        // Received into a file on the blocking pool. Taken out of the guard meanwhile: a
        // cancelled exchange loses it, and the leader starts over from offset 0.
        let incoming = match guard.current.take() {
            Some(r) if same => r,
            _ => {
                let (snapshots, meta) = (self.snapshots.clone(), req.meta.clone());
                blocking(move || snapshots.begin(&meta))
                    .await
                    .map_err(storage)?
            }
        };
        // A resent chunk overwrites what it covers, as a seek and write would.
        if req.offset > incoming.len() {
            let have = incoming.len();
            guard.current = Some(incoming);
            return Err(mismatch(have));
        }
        let (offset, data) = (req.offset, req.data);
        let incoming = blocking(move || {
            let mut incoming = incoming;
            incoming.write_at(offset, &data)?;
            Ok(incoming)
        })
        .await
        .map_err(storage)?;
        self.progress.set(Some(incoming.len()));
        if !req.done {
            guard.current = Some(incoming);
            drop(guard);
            if let Some(delay) = test_chunk_delay() {
                tokio::time::sleep(delay).await;
            }
            return Ok(InstallSnapshotResponse { vote });
        }
        // Stored under the lock, so a resent last chunk waits and then finds it complete.
        let (meta, len) = (incoming.meta().clone(), incoming.len());
        let snapshots = self.snapshots.clone();
        let data = blocking(move || snapshots.finish(incoming))
            .await
            .map_err(storage)?;
        guard.completed = Some((meta.snapshot_id.clone(), len));
        drop(guard);
        crash::point(crash::SNAPSHOT_RECEIVED);
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(data),
        };
        let answer = self.raft.install_full_snapshot(req.vote, snapshot).await;
        self.progress.set(None);
        Ok(answer.map_err(fatal)?.into())
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, kv_store::StoreError> + Send + 'static,
) -> Result<T, kv_store::StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| kv_store::StoreError::Task(e.to_string()))?
}

/// Serves raft RPCs on `listener` (over mutual TLS with `tls`) until `stop` fires;
/// every connection is a task on `tracker` that also ends when `stop` fires.
pub async fn serve(
    listener: TcpListener,
    receiver: Receiver,
    secret: Option<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let secret: Arc<[u8]> = secret.unwrap_or_default().into_bytes().into();
    let handshakes = Slots::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, don't spin.
                    tracing::warn!(error = %e, "accepting a raft connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = handshakes.admit(peer.ip()) else {
            tracing::debug!(%peer, "too many raft connections presenting their hello: closed");
            continue;
        };
        let (receiver, secret, stop) = (receiver.clone(), secret.clone(), stop.clone());
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                result = serve_connection(stream, peer, &receiver, &secret, acceptor, slot) => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "raft connection ended");
                    }
                }
            }
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    receiver: &Receiver,
    secret: &[u8],
    tls: Option<TlsAcceptor>,
    slot: Slot,
) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    // The TLS handshake and the hello share one deadline and the handshake slot: a peer
    // that stalls in either holds the slot no longer than one that says nothing.
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Stream::Server(Box::new(stream)),
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "refused a raft connection: TLS handshake failed");
                return Ok(());
            }
            Err(_) => {
                tracing::debug!(%peer, "no TLS handshake within {HELLO_TIMEOUT:?}: closed");
                return Ok(());
            }
        },
    };
    let mut conn = BufReader::with_capacity(READ_BUFFER, stream);
    // Nothing but the hello is read before the secret checks out, and a hello is small
    // and comes at once, so a stranger cannot make this node buffer more than a few KiB
    // or hold a connection for long.
    let Ok(hello) = tokio::time::timeout_at(deadline, read_frame(&mut conn, MAX_HELLO)).await
    else {
        tracing::debug!(%peer, "no raft hello within {HELLO_TIMEOUT:?}: closed");
        return Ok(());
    };
    let Some(hello) = hello? else {
        return Ok(());
    };
    let given = hello.strip_prefix(HELLO).and_then(|rest| {
        rest.iter()
            .position(|b| *b == b'\n')
            .map(|at| rest.split_at(at))
    });
    let refusal = match given {
        None => Some("not a quorum-kv raft connection (or another version of its protocol)".into()),
        Some((_, given_secret)) if !bool::from(given_secret[1..].ct_eq(secret)) => {
            tracing::warn!(%peer, "refused a raft connection: missing or wrong cluster secret");
            Some("missing or wrong cluster secret".into())
        }
        Some((theirs, _)) => match receiver.cluster.meet(&String::from_utf8_lossy(theirs))? {
            Verdict::Accept => None,
            Verdict::OtherCluster { ours, theirs } => {
                let reason = other_cluster(peer, &ours, &theirs);
                tracing::error!("refused a raft connection: {reason}");
                Some(reason)
            }
        },
    };
    drop(slot);
    if let Some(reason) = refusal {
        let mut refusal = reason_frame(frame_with(REJECTED, reason.len()), &reason);
        return write_frame(conn.get_mut(), &mut refusal).await;
    }
    let ours = receiver.cluster.get();
    write_frame(
        conn.get_mut(),
        &mut reason_frame(frame_with(OK, ours.len()), &ours),
    )
    .await?;
    while let Some(request) = read_frame(&mut conn, MAX_FRAME).await? {
        let mut answer = answer(receiver, &request).await;
        write_frame(conn.get_mut(), &mut answer).await?;
    }
    Ok(())
}

/// Decodes one request, runs it, and encodes the answer frame, which carries the
/// request's id.
async fn answer(receiver: &Receiver, request: &[u8]) -> Vec<u8> {
    let Some((kind, id, body)) = split_frame(request) else {
        return reason_frame(frame_for(BAD_REQUEST, 0, 64), "request too short");
    };
    let raft = &receiver.raft;
    let result = match kind {
        IDENTIFY => return receiver.identify(id, body),
        APPEND => run(id, body, "append", |req| raft.append_entries(req)).await,
        VOTE => run(id, body, "vote", |req| raft.vote(req)).await,
        SNAPSHOT => {
            run(id, body, "snapshot", |c: Chunk| {
                receiver.snapshot_chunk(InstallSnapshotRequest {
                    vote: c.vote,
                    meta: c.meta,
                    offset: c.offset,
                    data: c.data,
                    done: c.done,
                })
            })
            .await
        }
        kind => Err(format!("unknown request kind {kind}")),
    };
    result.unwrap_or_else(|reason| reason_frame(frame_for(BAD_REQUEST, id, 64), &reason))
}

/// Decodes a `what` request from `body`, runs it with `f`, and encodes the `OK` frame.
async fn run<Req, Resp, Fut>(
    id: u64,
    body: &[u8],
    what: &str,
    f: impl FnOnce(Req) -> Fut,
) -> Result<Vec<u8>, String>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    let req = postcard::from_bytes(body).map_err(|e| format!("undecodable {what} request: {e}"))?;
    postcard::to_io(&f(req).await, frame_for(OK, id, 64))
        .map_err(|e| format!("encoding the answer: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{LeaderId, Vote};

    use super::*;

    /// How the fake peer answers request `n` (from 0): after a delay, and with the
    /// request's id or another.
    struct Script {
        delay: fn(usize) -> Duration,
        wrong_id: fn(usize) -> bool,
        /// The answer kind to the connection's IDENTIFY request: OK, REJECTED (another
        /// node) or BAD_REQUEST (an older version).
        identify: u8,
    }

    /// A peer that answers each vote request with the request's own vote, so an answer
    /// says which request it belongs to, as `script` says.
    async fn fake_peer(script: Script) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut conn = BufReader::new(stream);
                let Ok(Some(_hello)) = read_frame(&mut conn, MAX_HELLO).await else {
                    continue;
                };
                let _ = write_frame(conn.get_mut(), &mut frame_with(OK, 0)).await;
                let Ok(Some(identify)) = read_frame(&mut conn, MAX_HELLO).await else {
                    continue;
                };
                assert_eq!(
                    split_frame(&identify).map(|(kind, _, _)| kind),
                    Some(IDENTIFY)
                );
                let mut answer = reason_frame(frame_for(script.identify, 0, 16), "not node 2");
                let _ = write_frame(conn.get_mut(), &mut answer).await;
                while let Ok(Some(request)) = read_frame(&mut conn, MAX_FRAME).await {
                    let (_, id, body) = split_frame(&request).expect("a request");
                    let req: VoteRequest<NodeId> = postcard::from_bytes(body).expect("a vote");
                    tokio::time::sleep((script.delay)(n)).await;
                    let id = if (script.wrong_id)(n) { id + 1000 } else { id };
                    n += 1;
                    let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                        Ok(VoteResponse::new(req.vote, None, true));
                    let mut frame =
                        postcard::to_io(&answer, frame_for(OK, id, 64)).expect("encode");
                    if write_frame(conn.get_mut(), &mut frame).await.is_err() {
                        break;
                    }
                }
            }
        });
        addr
    }

    fn vote(term: u64) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, 1), None)
    }

    fn term_of(answer: &VoteResponse<NodeId>) -> u64 {
        let LeaderId { term, .. } = answer.vote.leader_id;
        term
    }

    /// A cluster id that stays unknown: the fake peer presents none, so nothing is stored.
    fn test_cluster() -> ClusterId {
        ClusterId::load(std::path::Path::new("/nonexistent")).expect("cluster id")
    }

    async fn client(network: &mut Network, addr: SocketAddr) -> Peer {
        let node = NodeInfo {
            client_addr: String::new(),
            raft_addr: addr.to_string(),
        };
        network.new_client(2, &node).await
    }

    #[test]
    fn a_snapshot_chunk_is_framed_as_openrafts_request_would_be() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            meta: SnapshotMeta::default(),
            offset: 1 << 20,
            data: (0..=255u8).cycle().take(3000).collect(),
            done: true,
        };
        let ours = ChunkRef {
            vote: &req.vote,
            meta: &req.meta,
            offset: req.offset,
            data: &req.data,
            done: req.done,
        };
        let bytes = postcard::to_stdvec(&ours).expect("encodes");
        assert_eq!(bytes, postcard::to_stdvec(&req).expect("encodes"));
        let back: Chunk = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(
            (back.vote, back.meta, back.offset, back.data, back.done),
            (req.vote, req.meta, req.offset, req.data, req.done)
        );
    }

    #[tokio::test]
    async fn a_listener_of_another_node_id_is_refused_and_one_of_an_older_version_trusted() {
        let option = RPCOption::new(Duration::from_secs(5));
        let another = fake_peer(Script {
            delay: |_| Duration::ZERO,
            wrong_id: |_| false,
            identify: REJECTED,
        })
        .await;
        let mut network = Network::new(test_cluster(), None, None, None);
        let mut peer = client(&mut network, another).await;
        let refused = peer.vote(vote(1), option.clone()).await;
        assert!(
            matches!(
                refused,
                Err(RPCError::Unreachable(_) | RPCError::Network(_))
            ),
            "a listener that is another node must not be asked: {refused:?}"
        );
        let older = fake_peer(Script {
            delay: |_| Duration::ZERO,
            wrong_id: |_| false,
            identify: BAD_REQUEST,
        })
        .await;
        let mut peer = client(&mut network, older).await;
        let answer = peer.vote(vote(2), option).await.expect("an answer");
        assert_eq!(term_of(&answer), 2);
    }

    #[tokio::test]
    async fn a_call_dropped_mid_exchange_leaves_no_answer_for_the_next_call() {
        let addr = fake_peer(Script {
            delay: |n| Duration::from_millis(if n % 2 == 0 { 300 } else { 0 }),
            wrong_id: |_| false,
            identify: OK,
        })
        .await;
        let mut network = Network::new(test_cluster(), None, None, None);
        let option = RPCOption::new(Duration::from_secs(5));

        // openraft's own deadline fires while the first answer is still on its way.
        let mut peer = client(&mut network, addr).await;
        let dropped = tokio::time::timeout(
            Duration::from_millis(100),
            peer.vote(vote(1), option.clone()),
        )
        .await;
        assert!(dropped.is_err(), "the slow call should have been dropped");

        // The same client's next call gets its own answer, not the dropped call's.
        let answer = peer.vote(vote(2), option.clone()).await.expect("an answer");
        assert_eq!(term_of(&answer), 2);

        // A client dropped after its call was: the next client, which may take a pooled
        // connection, gets its own answer too.
        let dropped = tokio::time::timeout(
            Duration::from_millis(100),
            peer.vote(vote(3), option.clone()),
        )
        .await;
        assert!(dropped.is_err(), "the slow call should have been dropped");
        drop((dropped, peer));
        let mut peer = client(&mut network, addr).await;
        let answer = peer.vote(vote(4), option).await.expect("an answer");
        assert_eq!(term_of(&answer), 4);
    }

    #[tokio::test]
    async fn an_answer_to_another_request_fails_the_call_and_closes_the_connection() {
        let addr = fake_peer(Script {
            delay: |_| Duration::ZERO,
            wrong_id: |n| n == 1,
            identify: OK,
        })
        .await;
        let mut network = Network::new(test_cluster(), None, None, None);
        let option = RPCOption::new(Duration::from_secs(5));
        let mut peer = client(&mut network, addr).await;
        let answer = peer.vote(vote(1), option.clone()).await.expect("an answer");
        assert_eq!(term_of(&answer), 1);

        let before = mismatched_answers();
        let refused = peer.vote(vote(2), option.clone()).await;
        assert!(
            matches!(refused, Err(RPCError::Network(_))),
            "a mismatched answer must fail the call: {refused:?}"
        );
        assert!(mismatched_answers() > before);
        assert!(peer.conn.is_none(), "the connection must not be kept");

        let answer = peer.vote(vote(3), option).await.expect("an answer");
        assert_eq!(term_of(&answer), 3);
    }

    #[tokio::test]
    async fn our_deadline_fails_the_call_before_openrafts_fires() {
        let addr = fake_peer(Script {
            delay: |_| Duration::from_millis(500),
            wrong_id: |_| false,
            identify: OK,
        })
        .await;
        let mut network = Network::new(test_cluster(), None, None, None);
        let hard = Duration::from_millis(200);
        let mut peer = client(&mut network, addr).await;
        let outer = tokio::time::timeout(hard, peer.vote(vote(1), RPCOption::new(hard))).await;
        assert!(
            matches!(outer, Ok(Err(RPCError::Network(_)))),
            "the call should fail on its own deadline: {outer:?}"
        );
        assert!(
            peer.conn.is_none(),
            "a timed-out connection must not be kept"
        );
    }
}
