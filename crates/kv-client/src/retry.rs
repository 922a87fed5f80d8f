//! Sending one logical call: endpoint rotation, retries with backoff and jitter, an
//! overall deadline, and one session write number per logical write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};

use crate::error::decode_ok;
use crate::session::{Sessions, Ticket};
use crate::ClientError;

/// How long and how often a call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Overall time a call may take, retries included.
    pub deadline: Duration,
    /// Timeout of one HTTP request; above the server's write timeout (5 s by default),
    /// so a slow commit is answered by the server rather than cut off here.
    pub request_timeout: Duration,
    /// First backoff; doubles after every failed attempt.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// How long an idle connection is kept for reuse: below the nodes'
    /// `limits.idle_timeout_ms` (30 s by default), after which a node closes it, so a
    /// connection is not reused just as the node closes it.
    pub pool_idle_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            request_timeout: Duration::from_secs(7),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A final answer: status and body.
pub(crate) struct Attempt {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

/// Shared state of a client: endpoints, the HTTP client, where to start next.
#[derive(Clone)]
pub(crate) struct Call {
    endpoints: Arc<Vec<String>>,
    http: reqwest::Client,
    policy: RetryPolicy,
    /// The endpoint that answered last, tried first next time.
    preferred: Arc<AtomicUsize>,
    /// The sessions writes are numbered in.
    sessions: Arc<Sessions>,
    /// Seeds the backoff jitter.
    seed: u64,
}

/// The least time worth starting an attempt with.
const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// How many times one write moves to a new session because the cluster ended its own.
const SESSION_RESTARTS: u32 = 3;

/// What an attempt that may have applied means for the next one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// A read: any attempt may be repeated.
    No,
    /// A write numbered in a session or keyed: repeating it applies it at most once.
    Repeatable,
    /// A write that must not be repeated once it may have applied.
    Once,
}

/// One call as sent: method, path and query, body, extra headers.
type Request<'a> = (Method, &'a str, Option<&'a [u8]>, &'a [(&'a str, String)]);

#[derive(serde::Deserialize)]
struct Opened {
    session: String,
}

/// xorshift64*: jitter only, not for anything that must be unpredictable.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl Call {
    pub fn new(endpoints: Vec<String>, options: crate::ClientOptions) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Setup("no endpoints given".into()));
        }
        let setup = |e: &dyn std::fmt::Display| ClientError::Setup(e.to_string());
        let policy = options.policy;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| setup(&"the token is not visible ASCII"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(policy.pool_idle_timeout)
            .default_headers(headers);
        if let Some(pem) = &options.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| setup(&e))?;
            if certs.is_empty() {
                return Err(setup(&"the CA file holds no PEM certificate"));
            }
            // Only the cluster's CA: a certificate the system trusts is not the cluster's.
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &options.identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| setup(&e))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| setup(&e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        Ok(Self {
            endpoints: Arc::new(endpoints),
            http,
            policy,
            preferred: Arc::new(AtomicUsize::new(0)),
            sessions: Arc::default(),
            seed,
        })
    }

    /// Sends `method path` until a final answer or the deadline. Connection errors,
    /// 503 and 504 are retried on the next endpoint after a backoff; any other answer is
    /// final and returned as is. A write keeps one session write number across its
    /// attempts (unless the caller sends an Idempotency-Key of its own), and moves to a
    /// new session if the cluster says its session ended before the write applied.
    pub async fn run(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        is_write: bool,
    ) -> Result<Attempt, ClientError> {
        let deadline = Instant::now() + self.policy.deadline;
        let own_key = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"));
        if !is_write || own_key {
            let call = (method, path, body.as_deref(), headers);
            let writes = if is_write {
                Writes::Repeatable
            } else {
                Writes::No
            };
            return Ok(self.attempts(call, None, writes, deadline).await?.0);
        }
        let mut restarts = 0;
        loop {
            let ticket = self.ticket(deadline).await?;
            let call = (method.clone(), path, body.as_deref(), headers);
            let (attempt, maybe_applied) = self
                .attempts(call, Some(&ticket), Writes::Repeatable, deadline)
                .await?;
            let ended = attempt.status == StatusCode::UNPROCESSABLE_ENTITY
                && serde_json::from_slice::<serde_json::Value>(&attempt.body)
                    .is_ok_and(|v| v["error"]["code"] == "session_expired");
            if !ended {
                return Ok(attempt);
            }
            self.sessions.end(ticket.session());
            let last = String::from_utf8_lossy(&attempt.body).into_owned();
            if maybe_applied {
                // An earlier attempt may have applied before the session's answers went.
                return Err(ClientError::OutcomeUnknown { attempts: 0, last });
            }
            restarts += 1;
            if restarts > SESSION_RESTARTS {
                return Err(ClientError::Unavailable { attempts: 0, last });
            }
        }
    }

    /// Sends a write that cannot be repeated safely: retried only while no attempt may
    /// have applied (connection refused, 503); after that, `OutcomeUnknown`.
    pub async fn run_once(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Attempt, ClientError> {
        let deadline = Instant::now() + self.policy.deadline;
        let call = (method, path, Some(&body[..]), &[][..]);
        Ok(self.attempts(call, None, Writes::Once, deadline).await?.0)
    }

    /// How long one request may take.
    pub fn request_timeout(&self) -> Duration {
        self.policy.request_timeout
    }

    /// Sends `GET path` until a node answers `200`, and returns that answer with its
    /// body unread, to be streamed: for downloads too large to hold. Connection errors
    /// and `503` move to the next endpoint after a backoff, until the deadline; any other
    /// answer is final. The body has no deadline of its own.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let deadline = Instant::now() + self.policy.deadline;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut jitter_state = self.seed ^ (first as u64).wrapping_add(1);
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0u32;
        loop {
            let index = (first + attempts as usize) % self.endpoints.len();
            attempts += 1;
            let url = format!("{}{path}", self.endpoints[index]);
            let last = match self.http.get(url).send().await {
                Ok(response) if response.status() == StatusCode::OK => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response
                        .bytes()
                        .await
                        .map_or_else(|_| vec![], |b| b.to_vec());
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        return decode_ok::<serde_json::Value>(Attempt { status, body }).and_then(
                            |_| Err(ClientError::Codec(format!("unexpected answer {status}"))),
                        );
                    }
                    format!("{status}: {}", String::from_utf8_lossy(&body))
                }
                Err(e) => e.to_string(),
            };
            let jitter = 0.5 + (next_random(&mut jitter_state) % 1000) as f64 / 2000.0;
            let pause = backoff.mul_f64(jitter);
            // An attempt left with almost no time would only time out, and report
            // that instead of what the nodes answered: give up now.
            if Instant::now() + pause + MIN_ATTEMPT >= deadline {
                return Err(ClientError::Unavailable { attempts, last });
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }

    /// The next number of an open session, opening one if none has room.
    async fn ticket(&self, deadline: Instant) -> Result<Ticket, ClientError> {
        if let Some(ticket) = self.sessions.take() {
            return Ok(ticket);
        }
        let _opening = self.sessions.opening.lock().await;
        if let Some(ticket) = self.sessions.take() {
            return Ok(ticket);
        }
        let call = (Method::POST, "/v1/sessions", None, &[][..]);
        // Retrying an open at worst leaves a session unused, which ends when idle.
        let (attempt, _) = self.attempts(call, None, Writes::No, deadline).await?;
        let opened: Opened = decode_ok(attempt)?;
        let id = kv_core::session::parse_session_key(&opened.session)
            .ok_or_else(|| ClientError::Codec(format!("session id {:?}", opened.session)))?;
        self.sessions.add(id);
        self.sessions
            .take()
            .ok_or_else(|| ClientError::Codec("a session just opened has no room".into()))
    }

    /// The attempts of one call until a final answer or `deadline`; with whether an
    /// earlier attempt of a write may have applied.
    async fn attempts(
        &self,
        (method, path, body, headers): Request<'_>,
        ticket: Option<&Ticket>,
        writes: Writes,
        deadline: Instant,
    ) -> Result<(Attempt, bool), ClientError> {
        let is_write = writes != Writes::No;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut jitter_state = self.seed ^ (first as u64).wrapping_add(1);
        let mut backoff = self.policy.initial_backoff;
        let mut maybe_applied = false;
        let mut attempts = 0u32;
        loop {
            let index = (first + attempts as usize) % self.endpoints.len();
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.endpoints[index]))
                .timeout(
                    self.policy
                        .request_timeout
                        .min(left.max(Duration::from_millis(1))),
                );
            if let Some(ticket) = ticket {
                request = request.header("kv-session", ticket.header());
            }
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_vec());
            }
            let last = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retryable = status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::GATEWAY_TIMEOUT;
                    match response.bytes().await {
                        Ok(body) if !retryable => {
                            self.preferred.store(index, Ordering::Relaxed);
                            let attempt = Attempt {
                                status,
                                body: body.to_vec(),
                            };
                            return Ok((attempt, maybe_applied));
                        }
                        Ok(body) => {
                            maybe_applied |= is_write && status == StatusCode::GATEWAY_TIMEOUT;
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        }
                        Err(e) => {
                            maybe_applied |= is_write;
                            e.to_string()
                        }
                    }
                }
                Err(e) => {
                    // A request that never connected was not applied; any other failure
                    // of a write leaves its outcome open.
                    maybe_applied |= is_write && !e.is_connect();
                    e.to_string()
                }
            };
            if maybe_applied && writes == Writes::Once {
                return Err(ClientError::OutcomeUnknown { attempts, last });
            }
            let jitter = 0.5 + (next_random(&mut jitter_state) % 1000) as f64 / 2000.0;
            let pause = backoff.mul_f64(jitter);
            // An attempt left with almost no time would only time out, and report
            // that instead of what the nodes answered: give up now.
            if Instant::now() + pause + MIN_ATTEMPT >= deadline {
                return Err(if maybe_applied {
                    ClientError::OutcomeUnknown { attempts, last }
                } else {
                    ClientError::Unavailable { attempts, last }
                });
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(policy: RetryPolicy) -> crate::ClientOptions {
        crate::ClientOptions {
            policy,
            ..crate::ClientOptions::default()
        }
    }

    #[tokio::test]
    async fn unreachable_endpoints_give_unavailable_within_the_deadline() {
        // Port 1 on loopback refuses connections: nothing is applied anywhere.
        let policy = RetryPolicy {
            deadline: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        let call = Call::new(
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.2:1".into()],
            options(policy),
        )
        .expect("client");
        let started = Instant::now();
        match call
            .run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &[], true)
            .await
        {
            Err(ClientError::Unavailable { attempts, .. }) => {
                assert!(attempts >= 2, "{attempts} attempts")
            }
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(a) => panic!("expected Unavailable, got {}", a.status),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// Opens sessions numbered from 1; answers each other request with the next status
    /// of `statuses` (the last one repeats; 422 says the session ended) and records the
    /// Kv-Session it carried.
    async fn scripted_server(
        statuses: Vec<u16>,
    ) -> (String, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = keys.clone();
        tokio::spawn(async move {
            let (mut opened, mut answered) = (0u128, 0usize);
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => request.extend_from_slice(&buf[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let end = head.find("\r\n\r\n").map_or(request.len(), |i| i + 4);
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                // Read the whole body: closing with unread bytes would reset the connection.
                let mut body_left = (end + length).saturating_sub(request.len());
                while body_left > 0 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => body_left = body_left.saturating_sub(k),
                    }
                }
                if head.starts_with("post /v1/sessions ") {
                    opened += 1;
                    let body = format!(r#"{{"session":"{opened:032x}","expires_at_ms":1}}"#);
                    let response = format!(
                        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    continue;
                }
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("kv-session: "))
                    .map(str::to_owned);
                seen.lock().expect("lock").push(key);
                let status = statuses[answered.min(statuses.len() - 1)];
                answered += 1;
                let body: &[u8] = if status == 422 {
                    br#"{"error":{"code":"session_expired","message":"scripted"}}"#
                } else {
                    br#"{"error":{"code":"scripted","message":"scripted"}}"#
                };
                let response = format!(
                    "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.write_all(body).await;
            }
        });
        (endpoint, keys)
    }

    fn short_policy() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_millis(400),
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..RetryPolicy::default()
        }
    }

    fn one_number_on_every_attempt(keys: &[Option<String>]) {
        assert!(keys.len() >= 2, "{} attempts", keys.len());
        assert!(keys[0].is_some(), "a write carries a Kv-Session");
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    }

    #[tokio::test]
    async fn an_outcome_unknown_write_is_retried_under_the_same_session_number() {
        let (endpoint, keys) = scripted_server(vec![504, 200]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        let attempt = call
            .run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &[], true)
            .await
            .expect("the retry succeeds");
        assert_eq!(attempt.status, StatusCode::OK);
        one_number_on_every_attempt(&keys.lock().expect("lock"));
    }

    #[tokio::test]
    async fn a_write_that_was_ever_outcome_unknown_stays_outcome_unknown() {
        // A 503 after a 504 does not undo the 504: the first attempt may have applied.
        let (endpoint, keys) = scripted_server(vec![504, 503]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        match call
            .run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &[], true)
            .await
        {
            Err(ClientError::OutcomeUnknown { .. }) => {}
            Err(e) => panic!("expected OutcomeUnknown, got {e}"),
            Ok(a) => panic!("expected OutcomeUnknown, got {}", a.status),
        }
        one_number_on_every_attempt(&keys.lock().expect("lock"));
    }

    #[tokio::test]
    async fn a_write_that_cannot_be_repeated_stops_at_its_first_unknown_outcome() {
        // 503 applied nothing, so it is retried; after the 504 it never is.
        let (endpoint, keys) = scripted_server(vec![503, 504, 200]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        match call
            .run_once(Method::POST, "/v1/tokens", b"{}".to_vec())
            .await
        {
            Err(ClientError::OutcomeUnknown { attempts: 2, .. }) => {}
            Err(e) => panic!("expected OutcomeUnknown after 2 attempts, got {e}"),
            Ok(a) => panic!("expected OutcomeUnknown, got {}", a.status),
        }
        let keys = keys.lock().expect("lock");
        assert_eq!(keys.len(), 2, "no third attempt");
        assert!(
            keys.iter().all(Option::is_none),
            "not numbered in a session"
        );
    }

    #[tokio::test]
    async fn a_write_only_ever_refused_with_503_is_unavailable() {
        let (endpoint, _) = scripted_server(vec![503]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        match call
            .run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &[], true)
            .await
        {
            Err(ClientError::Unavailable { .. }) => {}
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(a) => panic!("expected Unavailable, got {}", a.status),
        }
    }

    #[tokio::test]
    async fn a_write_whose_session_ended_before_it_applied_moves_to_a_new_one() {
        let (endpoint, keys) = scripted_server(vec![422, 200]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        let attempt = call
            .run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &[], true)
            .await
            .expect("applied in the new session");
        assert_eq!(attempt.status, StatusCode::OK);
        let keys = keys.lock().expect("lock");
        let first = format!("{:032x}; seq=1; ack=1", 1);
        let second = format!("{:032x}; seq=1; ack=1", 2);
        assert_eq!(*keys, vec![Some(first), Some(second)]);
    }

    #[tokio::test]
    async fn a_session_that_ended_after_a_maybe_applied_attempt_is_outcome_unknown() {
        let (endpoint, _) = scripted_server(vec![504, 422]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        match call
            .run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &[], true)
            .await
        {
            Err(ClientError::OutcomeUnknown { .. }) => {}
            Err(e) => panic!("expected OutcomeUnknown, got {e}"),
            Ok(a) => panic!("expected OutcomeUnknown, got {}", a.status),
        }
    }

    #[tokio::test]
    async fn a_callers_own_idempotency_key_replaces_the_session() {
        let (endpoint, keys) = scripted_server(vec![200]).await;
        let call = Call::new(vec![endpoint], options(short_policy())).expect("client");
        let own = [("idempotency-key", "webhook-7".to_owned())];
        call.run(Method::PUT, "/v1/kv/k", Some(b"1".to_vec()), &own, true)
            .await
            .expect("answered");
        assert_eq!(*keys.lock().expect("lock"), vec![None]);
    }
}
