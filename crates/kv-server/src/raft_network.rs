//! Raft RPCs between nodes: postcard bodies over HTTP on the separate raft listener.
//!
//! Each RPC is `POST /raft/{append,vote,snapshot}`; the answer body is the postcard
//! encoding of the whole `Result` the receiving raft returned, so remote raft errors
//! reach the sender's openraft as `RemoteError`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
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

/// Header carrying the cluster secret on raft RPCs.
pub const SECRET_HEADER: &str = "x-quorum-kv-secret";

/// Largest raft RPC body: snapshot chunks (1 MiB) and AppendEntries batches of up to
/// `max_payload_entries` values (1 MiB each at most) fit with room to spare.
pub const RAFT_BODY_LIMIT: usize = 512 * 1024 * 1024;

/// Makes connections to peers; all share one HTTP client (one connection pool).
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    secret: Option<Arc<str>>,
}

impl Network {
    /// A network whose requests carry `secret`, if set, and leave from `local_address`,
    /// if set.
    pub fn new(secret: Option<String>, local_address: Option<IpAddr>) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .local_address(local_address)
            .pool_max_idle_per_host(8)
            .build()?;
        Ok(Self {
            client,
            secret: secret.map(Into::into),
        })
    }
}

/// The way to one peer.
pub struct Peer {
    target: NodeId,
    base: String,
    client: reqwest::Client,
    secret: Option<Arc<str>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            target,
            base: format!("http://{}/raft", node.raft_addr),
            client: self.client.clone(),
            secret: self.secret.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, E>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = self
            .client
            .post(format!("{}/{path}", self.base))
            .timeout(option.soft_ttl())
            .body(body);
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret.as_ref());
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                // Unreachable makes openraft back off instead of retrying at once.
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if status != StatusCode::OK {
            let msg = format!("{status}: {}", String::from_utf8_lossy(&bytes));
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(msg),
            )));
        }
        let result: Result<Resp, E> =
            postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call("vote", &rpc, &option).await
    }
}

#[derive(Clone)]
struct RaftState {
    raft: Raft,
    secret: Option<Arc<str>>,
}

/// The raft listener's routes.
pub fn router(raft: Raft, secret: Option<String>) -> Router {
    let state = RaftState {
        raft,
        secret: secret.map(Into::into),
    };
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT))
        // Checked before any body is read, so a stranger cannot make a node buffer one.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ))
        .with_state(state)
}

async fn require_secret(
    State(state): State<RaftState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(secret) = &state.secret {
        let given = request.headers().get(SECRET_HEADER).map(|v| v.as_bytes());
        if given != Some(secret.as_bytes()) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
        }
    }
    next.run(request).await
}

/// Decodes a request and answers the encoded `Result`.
async fn serve<Req, Resp, Fut>(body: &[u8], f: impl FnOnce(Req) -> Fut) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    let req: Req = match postcard::from_bytes(body) {
        Ok(req) => req,
        Err(e) => {
            let msg = format!("undecodable raft request: {e}");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    match postcard::to_stdvec(&f(req).await) {
        Ok(raw) => (StatusCode::OK, raw).into_response(),
        Err(e) => {
            let msg = format!("encoding raft response: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
        }
    }
}

async fn append(State(s): State<RaftState>, body: Bytes) -> Response {
    serve(&body, |req: AppendEntriesRequest<TypeConfig>| {
        s.raft.append_entries(req)
    })
    .await
}

async fn vote(State(s): State<RaftState>, body: Bytes) -> Response {
    serve(&body, |req: VoteRequest<NodeId>| s.raft.vote(req)).await
}

async fn snapshot(State(s): State<RaftState>, body: Bytes) -> Response {
    serve(&body, |req: InstallSnapshotRequest<TypeConfig>| {
        s.raft.install_snapshot(req)
    })
    .await
}
