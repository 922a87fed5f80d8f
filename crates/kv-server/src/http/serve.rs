//! The client port's accept loop. axum's own `serve` runs hyper without a timer (no
//! header or idle timeout) and accepts every connection; this one adds the bounds:
//! - at most `limits.max_connections` open connections, `limits.max_connections_per_ip`
//!   from one address; a connection past either cap is answered `503 unavailable` (JSON,
//!   `Retry-After`) and closed;
//! - a connection must deliver the head of its next request within
//!   `limits.idle_timeout_ms` of being accepted or of finishing the previous one (hyper's
//!   header read timeout), so idle keep-alive connections and slow heads alike are closed;
//! - a connection that keeps an answer waiting, its reader taking in less than
//!   [`MIN_DRAIN_BYTES`] within `limits.idle_timeout_ms`, is closed ([`Drained`]);
//! - a request whose URI or headers are larger than this API needs is refused as JSON
//!   (`uri_too_long`, `headers_too_large`); hyper's own, higher limits remain behind them
//!   with its bodiless answers, as do requests that are not HTTP/1 at all;
//! - on stop, every connection finishes the request it is serving, then closes; one
//!   still open after [`STOP_GRACE`] is dropped;
//! - with TLS, each connection's handshake runs in its own task within
//!   `limits.idle_timeout_ms`, so a peer that never finishes it holds neither the accept
//!   loop nor its slot for longer; refusals over the caps are written over TLS too, and a
//!   plaintext request is closed unanswered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kv_core::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiError;
use crate::slots::{Full, Slots};

/// Longest request target (path and query) accepted: a 4 KiB key escaped byte by byte,
/// with room for the query.
pub(crate) const MAX_URI_BYTES: usize = 16 * 1024;
/// Most bytes of header names and values accepted in one request.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper's limit on a request head, above ours so that ours answers first.
const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Refusals of connections over the caps being written at once (8 for one address); past
/// it, more are closed without an answer.
const MAX_REFUSING: usize = 64;
const MAX_REFUSING_PER_IP: usize = 8;
/// Bytes a reader must take in within the idle timeout while an answer waits for it.
pub(crate) const MIN_DRAIN_BYTES: usize = 64 * 1024;
/// How long a refusal may take to write and to see the peer's request out.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// How long stopping waits for connections to finish the requests they are serving.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The most a client's TLS handshake may take (less if `idle_timeout` is shorter): a
/// connection still handshaking holds a slot.
const TLS_HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// The caps and timeouts of the client port.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one address.
    pub max_connections_per_ip: usize,
    /// How long a connection may take to deliver a request's head.
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `stop` fires, then lets
/// open connections finish their requests (for at most [`STOP_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_ip);
    let refusing = Slots::new(MAX_REFUSING, MAX_REFUSING_PER_IP);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, don't spin.
                    tracing::warn!(error = %e, "accepting a client connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match slots.admit(peer.ip()) {
            Ok(slot) => {
                let (router, stop, acceptor) = (router.clone(), stop.clone(), acceptor.clone());
                connections.spawn(async move {
                    let idle = limits.idle_timeout;
                    match acceptor {
                        None => {
                            serve_connection(Drained::new(stream, idle), router, idle, stop).await
                        }
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                idle.min(TLS_HANDSHAKE_TIME),
                                accept(&acceptor, stream, idle),
                            );
                            let accepted = tokio::select! {
                                _ = stop.cancelled() => None,
                                accepted = handshake => match accepted {
                                    Ok(Ok(stream)) => Some(stream),
                                    Ok(Err(e)) => {
                                        // Plaintext, an untrusted certificate: the peer's doing.
                                        tracing::debug!(%peer, error = %e, "client TLS handshake failed");
                                        None
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "no client TLS handshake in time");
                                        None
                                    }
                                },
                            };
                            if let Some(stream) = accepted {
                                serve_connection(stream, router, idle, stop).await;
                            }
                        }
                    }
                    drop(slot);
                });
            }
            Err(full) => {
                tracing::debug!(%peer, ?full, "client connection over the cap: refused");
                if let Ok(slot) = refusing.admit(peer.ip()) {
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        let refusal = async move {
                            match acceptor {
                                None => refuse(stream, full).await,
                                Some(acceptor) => {
                                    refuse(acceptor.accept(stream).await?, full).await
                                }
                            }
                        };
                        let _ = tokio::time::timeout(REFUSAL_TIME, refusal).await;
                        drop(slot);
                    });
                }
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(STOP_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("client connections still open after {STOP_GRACE:?}; stopping anyway");
    }
}

/// A TLS connection over `io` whose socket writes are guarded as [`Drained`] says:
/// under TLS, because rustls takes a small answer whole while the socket is full and
/// waits in the flush and in close_notify, where a guard above it would not look.
async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    io: S,
    window: Duration,
) -> std::io::Result<tokio_rustls::server::TlsStream<Drained<S>>> {
    acceptor.accept(Drained::new(io, window)).await
}

/// Serves the requests of one connection (its writes guarded by [`Drained`]) until it
/// closes, idles out, or `stop` fires.
async fn serve_connection<S>(
    stream: S,
    router: Router,
    idle_timeout: Duration,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .max_header_size(HYPER_MAX_HEAD_BYTES);
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(STOP_GRACE, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        // Idle timeouts, resets and requests hyper could not parse: the peer's doing.
        tracing::debug!(error = %e, "client connection ended");
    }
}

/// A client connection whose writes fail once an answer has waited `window` for its
/// reader to take in [`MIN_DRAIN_BYTES`]: a reader that stops reading (or trickles)
/// cannot hold a connection and the answer buffered for it.
struct Drained<S> {
    stream: S,
    window: Duration,
    /// Armed when a write found the socket full; cleared once the reader has taken in
    /// enough or everything was flushed.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes written since the deadline was armed.
    progress: usize,
}

impl<S> Drained<S> {
    fn new(stream: S, window: Duration) -> Self {
        Self {
            stream,
            window,
            deadline: None,
            progress: 0,
        }
    }

    /// Pending while the reader has time left; an error once it has run out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let window = self.window;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Drained<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Drained<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if self.deadline.is_some() {
                    self.progress += n;
                    if self.progress >= MIN_DRAIN_BYTES {
                        self.deadline = None;
                        self.progress = 0;
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if self.deadline.is_none() {
                    self.progress = 0;
                }
                self.stalled(cx)
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.deadline = None;
                self.progress = 0;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.stalled(cx).map_ok(|_| ()),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.stream).poll_shutdown(cx) {
            Poll::Pending => self.stalled(cx).map_ok(|_| ()),
            other => other,
        }
    }
}

/// Answers a connection over the caps with a JSON 503 and closes it, after reading what
/// the peer sent meanwhile (closing with unread input would reset the connection and
/// could discard the answer before the peer reads it).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    full: Full,
) -> std::io::Result<()> {
    let message = match full {
        Full::All(n) => format!("this node has its {n} client connections open; retry shortly"),
        Full::Address(n) => {
            format!("this address has {n} connections open to this node, its limit; retry shortly")
        }
    };
    let body = serde_json::json!({ "error": { "code": ErrorCode::Unavailable.as_str(), "message": message } })
        .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Refuses a request whose target or headers are larger than [`MAX_URI_BYTES`] or
/// [`MAX_HEADER_BYTES`], before any handler reads it.
pub(crate) async fn bounded_head(request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("the headers are {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::net::TcpStream;

    use super::*;

    /// Serves a router with a quick route and one that takes `slow` on a fresh port.
    async fn start(limits: ConnectionLimits, stop: CancellationToken) -> std::net::SocketAddr {
        start_with(limits, None, stop).await
    }

    /// [`start`], over TLS with `tls`.
    async fn start_with(
        limits: ConnectionLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
        stop: CancellationToken,
    ) -> std::net::SocketAddr {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/big", get(|| async { "b".repeat(8 << 20) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn(bounded_head));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, router, limits, tls, stop));
        addr
    }

    fn limits(max: usize, per_ip: usize, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            idle_timeout: Duration::from_millis(idle_ms),
        }
    }

    /// Sends `request` as written and reads until the server closes.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.flush().await.expect("flush");
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the server closes the connection")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    const GET_CLOSE: &str = "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn a_connection_past_the_cap_gets_a_json_503_and_others_keep_working() {
        let addr = start(limits(2, 2, 10_000), CancellationToken::new()).await;
        let held: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.expect("connect"),
            TcpStream::connect(addr).await.expect("connect"),
        ];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let answer = exchange(&mut third, GET_CLOSE).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert!(
            answer.contains(r#"{"error":{"code":"unavailable""#),
            "{answer}"
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = TcpStream::connect(addr).await.expect("connect");
        let answer = exchange(&mut again, GET_CLOSE).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "slots given back: {answer}"
        );
    }

    #[tokio::test]
    async fn idle_connections_and_slow_heads_are_closed() {
        let addr = start(limits(8, 8, 300), CancellationToken::new()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nhost:")
            .await
            .expect("write");
        for stream in [&mut idle, &mut slow] {
            let mut buf = Vec::new();
            let read = stream.read_to_end(&mut buf);
            let closed = tokio::time::timeout(Duration::from_secs(3), read).await;
            assert!(closed.is_ok(), "still open after 3 s");
        }
        // A kept-alive connection serves the next request, is idle again after its
        // answer, and is closed too.
        let mut kept = TcpStream::connect(addr).await.expect("connect");
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 12];
        kept.read_exact(&mut first).await.expect("an answer");
        assert_eq!(&first, b"HTTP/1.1 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = exchange(&mut kept, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(
            answer.matches("HTTP/1.1 200").count(),
            1,
            "the second answer, then the close: {answer}"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_its_answer_is_dropped() {
        let addr = start(limits(8, 8, 300), CancellationToken::new()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the connection is still open");
        assert!(
            got.len() < 8 << 20,
            "the whole 8 MiB answer waited for a reader that stopped ({} bytes)",
            got.len()
        );
    }

    #[tokio::test]
    async fn oversized_targets_and_headers_are_refused_as_json() {
        let addr = start(limits(8, 8, 10_000), CancellationToken::new()).await;
        let long = format!(
            "GET /{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "a".repeat(MAX_URI_BYTES)
        );
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let answer = exchange(&mut s, &long).await;
        assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
        assert!(answer.contains(r#""code":"uri_too_long""#), "{answer}");
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-a: {}\r\nx-b: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES / 2),
            "b".repeat(MAX_HEADER_BYTES / 2)
        );
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let answer = exchange(&mut s, &big).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert!(answer.contains(r#""code":"headers_too_large""#), "{answer}");
    }

    /// A node's TLS configurations from a fresh CA (kept alive by the returned folder),
    /// and a connector that trusts that CA.
    fn tls() -> (
        crate::tls::Tls,
        tokio_rustls::TlsConnector,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = "1=127.0.0.1".parse().expect("a node");
        crate::certs::make(dir.path(), &[node], &[]).expect("certificates");
        let tls = crate::tls::Tls::load(&crate::config::TlsConfig {
            cert_file: dir.path().join("node1.pem"),
            key_file: dir.path().join("node1-key.pem"),
            ca_file: dir.path().join("ca.pem"),
            client_ca_file: None,
            require_client_cert: false,
        })
        .expect("loads");
        let connector = tokio_rustls::TlsConnector::from(tls.raft_dialer.clone());
        (tls, connector, dir)
    }

    async fn connect_tls(
        connector: &tokio_rustls::TlsConnector,
        addr: std::net::SocketAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        connector.connect(name, tcp).await.expect("a TLS handshake")
    }

    #[tokio::test]
    async fn over_tls_the_cap_answers_json_and_plaintext_is_closed_unanswered() {
        let (tls, connector, _dir) = tls();
        let limits = limits(1, 1, 10_000);
        let addr = start_with(limits, Some(tls.client_port), CancellationToken::new()).await;
        let mut first = connect_tls(&connector, addr).await;
        let mut second = connect_tls(&connector, addr).await;
        let answer = exchange(&mut second, GET_CLOSE).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains(r#"{"error":{"code":"unavailable""#),
            "{answer}"
        );
        let answer = exchange(&mut first, GET_CLOSE).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        let answer = exchange(&mut plain, GET_CLOSE).await;
        assert!(
            !answer.contains("HTTP/1.1"),
            "answered in plaintext: {answer}"
        );
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_comes_gives_its_slot_back() {
        let (tls, connector, _dir) = tls();
        let addr = start_with(
            limits(1, 1, 300),
            Some(tls.client_port),
            CancellationToken::new(),
        )
        .await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "a connection without a handshake is still open after 3 s"
        );
        let mut next = connect_tls(&connector, addr).await;
        let answer = exchange(&mut next, GET_CLOSE).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the slot is free again: {answer}"
        );
    }

    /// An answer small enough for rustls to take whole while the socket is full waits in
    /// the flush and in close_notify, below hyper's timers: the guard must see those too.
    #[tokio::test]
    async fn over_tls_an_answer_stuck_in_flush_or_close_is_dropped() {
        let (tls, connector, _dir) = tls();
        let (server_io, client_io) = tokio::io::duplex(4096);
        let acceptor = TlsAcceptor::from(tls.client_port);
        let window = Duration::from_millis(300);
        let name =
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let (server, client) = tokio::join!(
            accept(&acceptor, server_io, window),
            connector.connect(name, client_io)
        );
        let (mut server, _client) = (server.expect("handshake"), client.expect("handshake"));
        // The client never reads: 16 KiB fit in rustls' buffer, not in the pipe.
        server
            .write_all(&[b'x'; 16 * 1024])
            .await
            .expect("buffered");
        let closed = tokio::time::timeout(Duration::from_secs(3), server.shutdown()).await;
        assert!(
            matches!(closed, Ok(Err(_))),
            "the flush and close_notify waited on a reader that stopped: {closed:?}"
        );
    }

    #[tokio::test]
    async fn over_tls_a_client_that_stops_reading_its_answer_is_dropped() {
        let (tls, connector, _dir) = tls();
        let addr = start_with(
            limits(8, 8, 300),
            Some(tls.client_port),
            CancellationToken::new(),
        )
        .await;
        let mut s = connect_tls(&connector, addr).await;
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        s.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the connection is still open");
        assert!(
            got.len() < 8 << 20,
            "the whole 8 MiB answer waited for a reader that stopped ({} bytes)",
            got.len()
        );
    }

    #[tokio::test]
    async fn stopping_lets_a_request_in_progress_finish() {
        let stop = CancellationToken::new();
        let addr = start(limits(8, 8, 10_000), stop.clone()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let answer = exchange(&mut s, "").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
