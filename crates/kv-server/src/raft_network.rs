//! Raft RPCs between nodes: postcard frames over one plain TCP connection per peer.
//!
//! Raft traffic is small, frequent and always between members, so it skips HTTP: one
//! write and usually one read per RPC, no headers to encode or parse, and no connection
//! task between openraft's replication task and the socket. The protocol:
//!
//! - Every frame is a big-endian `u32` length, then that many bytes (at most
//!   [`MAX_FRAME`]).
//! - The connecting node's first frame is [`HELLO`] followed by the cluster secret
//!   (empty when none is set). The listener answers [`OK`], or [`REJECTED`] with a
//!   reason and closes the connection.
//! - Then each request is one frame, a kind byte ([`APPEND`], [`VOTE`], [`SNAPSHOT`])
//!   and the postcard encoding of openraft's request; each answer is one frame, [`OK`]
//!   and the postcard encoding of the whole `Result` the receiving raft returned (so
//!   remote raft errors reach the sender's openraft as `RemoteError`), or [`BAD_REQUEST`]
//!   and a reason. One request at a time per connection: openraft sends one RPC at a time
//!   to each peer per replication stream.
//!
//! openraft makes a new client for every linearizable-read round and every election, so
//! idle connections go back to a small pool per peer address when a client is dropped,
//! and the next client takes one from there instead of connecting. A connection that
//! fails or times out mid-RPC is closed instead (its stream may hold half an answer).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use kv_store::typ::{NodeId, NodeInfo, Raft, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First bytes of the connecting node's first frame; the cluster secret follows.
pub const HELLO: &[u8] = b"quorum-kv-raft/1\n";
/// Request kinds: the first byte of a request frame.
pub const APPEND: u8 = 1;
pub const VOTE: u8 = 2;
pub const SNAPSHOT: u8 = 3;
/// Answer kinds: the first byte of an answer frame.
pub const OK: u8 = 0;
pub const BAD_REQUEST: u8 = 1;
pub const REJECTED: u8 = 2;

/// Largest frame: snapshot chunks (1 MiB) and AppendEntries batches of up to
/// `max_payload_entries` entries (each at most 4 MiB of values) fit with room to spare.
pub const MAX_FRAME: usize = 512 * 1024 * 1024;

/// Largest hello: the protocol line and a cluster secret.
const MAX_HELLO: usize = 4096;

/// Bytes buffered for reading answers; most answers fit in one read.
const READ_BUFFER: usize = 16 * 1024;
/// Idle connections kept per peer address.
const IDLE_PER_PEER: usize = 8;

type Conn = BufReader<TcpStream>;

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Fills in the length of `frame`, whose first 4 bytes were reserved for it, and sends it
/// in one write.
async fn write_frame(stream: &mut TcpStream, frame: &mut [u8]) -> Result<(), FrameError> {
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    stream.write_all(frame).await?;
    Ok(())
}

/// A frame with 4 bytes reserved for the length, then `kind`.
fn frame_with(kind: u8, capacity: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + capacity);
    frame.extend_from_slice(&[0, 0, 0, 0, kind]);
    frame
}

/// A refusal or bad-request frame: `kind`, then the reason.
fn reason_frame(kind: u8, reason: &str) -> Vec<u8> {
    let mut frame = frame_with(kind, reason.len());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream before its
/// first byte.
async fn read_frame(
    reader: &mut BufReader<TcpStream>,
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
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// Makes connections to peers, and keeps the idle ones.
#[derive(Clone)]
pub struct Network {
    secret: Arc<str>,
    local_address: Option<IpAddr>,
    idle: Arc<Mutex<HashMap<String, Vec<Conn>>>>,
}

impl Network {
    /// A network that presents `secret`, if set, and connects from `local_address`, if
    /// set (so address-based firewall rules see which node is talking).
    pub fn new(secret: Option<String>, local_address: Option<IpAddr>) -> Self {
        Self {
            secret: secret.unwrap_or_default().into(),
            local_address,
            idle: Arc::default(),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Conn>>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_idle(&self, addr: &str) -> Option<Conn> {
        self.idle().get_mut(addr)?.pop()
    }

    fn put_idle(&self, addr: &str, conn: Conn) {
        let mut idle = self.idle();
        let conns = idle.entry(addr.to_owned()).or_default();
        if conns.len() < IDLE_PER_PEER {
            conns.push(conn);
        }
    }
}

/// The way to one peer: one connection, taken from the idle ones or opened on first
/// use and after a failure, and given back when the client is dropped.
pub struct Peer {
    target: NodeId,
    addr: String,
    network: Network,
    conn: Option<Conn>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.network.put_idle(&self.addr, conn);
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            target,
            addr: node.raft_addr.clone(),
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
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer refused the connection: {0}")]
    Rejected(String),
    #[error("the peer could not decode the request: {0}")]
    BadRequest(String),
    #[error("answer of unknown kind {0}")]
    UnknownAnswer(u8),
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
        let mut stream = socket.connect(addr).await.map_err(connect_error)?;
        let mut hello = Vec::with_capacity(4 + HELLO.len() + self.network.secret.len());
        hello.extend_from_slice(&[0; 4]);
        hello.extend_from_slice(HELLO);
        hello.extend_from_slice(self.network.secret.as_bytes());
        write_frame(&mut stream, &mut hello).await?;
        let mut conn = BufReader::with_capacity(READ_BUFFER, stream);
        read_answer(&mut conn).await?;
        Ok(conn)
    }

    /// Sends one request and reads the raw answer, on this client's connection, an idle
    /// one, or a new one. A kept connection may have been closed by the peer since (it
    /// restarted, say): if it fails, the request goes once more on a new connection.
    /// Raft RPCs may be repeated, so a request the peer did see is no harm.
    async fn exchange(&mut self, frame: &mut [u8]) -> Result<Vec<u8>, CallError> {
        if self.conn.is_none() {
            self.conn = self.network.take_idle(&self.addr);
        }
        if let Some(conn) = &mut self.conn {
            match send(conn, frame).await {
                Err(CallError::Frame(_) | CallError::Closed) => self.conn = None,
                done => return done,
            }
        }
        let conn = self.conn.insert(self.connect().await?);
        send(conn, frame).await
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
        let mut frame = postcard::to_io(req, frame_with(kind, 256))
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let exchange = self.exchange(&mut frame);
        let answer = match tokio::time::timeout(option.soft_ttl(), exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(match e {
                    // Unreachable makes openraft back off instead of retrying at once.
                    CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                    e => RPCError::Network(NetworkError::new(&e)),
                });
            }
            Err(elapsed) => {
                self.conn = None;
                return Err(RPCError::Network(NetworkError::new(&elapsed)));
            }
        };
        let result: Result<Resp, E> = postcard::from_bytes(&answer[1..])
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// One request and its answer on `conn`.
async fn send(conn: &mut Conn, frame: &mut [u8]) -> Result<Vec<u8>, CallError> {
    write_frame(conn.get_mut(), frame).await?;
    read_answer(conn).await
}

/// Reads one answer frame: `OK` and its body, or the error a refusal, a bad request, an
/// unknown kind or a closed connection stands for.
async fn read_answer(conn: &mut Conn) -> Result<Vec<u8>, CallError> {
    let answer = read_frame(conn, MAX_FRAME)
        .await?
        .ok_or(CallError::Closed)?;
    let reason = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    match answer.split_first() {
        Some((&OK, _)) => Ok(answer),
        Some((&REJECTED, r)) => Err(CallError::Rejected(reason(r))),
        Some((&BAD_REQUEST, r)) => Err(CallError::BadRequest(reason(r))),
        Some((&kind, _)) => Err(CallError::UnknownAnswer(kind)),
        None => Err(CallError::Closed),
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
        self.call(SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(VOTE, &rpc, &option).await
    }
}

/// Serves raft RPCs on `listener` until `stop` fires; every connection is a task on
/// `tracker` that also ends when `stop` fires.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    secret: Option<String>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let secret: Arc<[u8]> = secret.unwrap_or_default().into_bytes().into();
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
        let (raft, secret, stop) = (raft.clone(), secret.clone(), stop.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                result = serve_connection(stream, raft, &secret) => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "raft connection ended");
                    }
                }
            }
        });
    }
}

async fn serve_connection(stream: TcpStream, raft: Raft, secret: &[u8]) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let mut conn = BufReader::with_capacity(READ_BUFFER, stream);
    // Nothing but the hello is read before the secret checks out, and a hello is small,
    // so a stranger cannot make this node buffer more than a few KiB.
    let Some(hello) = read_frame(&mut conn, MAX_HELLO).await? else {
        return Ok(());
    };
    let given = hello.strip_prefix(HELLO);
    if given != Some(secret) {
        let reason = if given.is_none() {
            "not a quorum-kv raft connection"
        } else {
            "missing or wrong cluster secret"
        };
        return write_frame(conn.get_mut(), &mut reason_frame(REJECTED, reason)).await;
    }
    write_frame(conn.get_mut(), &mut frame_with(OK, 0)).await?;
    while let Some(request) = read_frame(&mut conn, MAX_FRAME).await? {
        let mut answer = answer(&raft, &request).await;
        write_frame(conn.get_mut(), &mut answer).await?;
    }
    Ok(())
}

/// Decodes one request, runs it on `raft`, and encodes the answer frame.
async fn answer(raft: &Raft, request: &[u8]) -> Vec<u8> {
    let result = match request.split_first() {
        Some((&APPEND, body)) => run(body, "append", |req| raft.append_entries(req)).await,
        Some((&VOTE, body)) => run(body, "vote", |req| raft.vote(req)).await,
        Some((&SNAPSHOT, body)) => run(body, "snapshot", |req| raft.install_snapshot(req)).await,
        Some((kind, _)) => Err(format!("unknown request kind {kind}")),
        None => Err("empty request".to_owned()),
    };
    result.unwrap_or_else(|reason| reason_frame(BAD_REQUEST, &reason))
}

/// Decodes a `what` request from `body`, runs it with `f`, and encodes the `OK` frame.
async fn run<Req, Resp, Fut>(
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
    postcard::to_io(&f(req).await, frame_with(OK, 64))
        .map_err(|e| format!("encoding the answer: {e}"))
}
