//! Sending one logical call: endpoint rotation, retries with backoff and jitter, an
//! overall deadline, and one Idempotency-Key per logical write.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};

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
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            request_timeout: Duration::from_secs(7),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
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
    /// Makes idempotency keys unique within the process.
    counter: Arc<AtomicU64>,
    /// Makes idempotency keys unique across processes.
    seed: u64,
}

/// xorshift64*: jitter only, not for anything that must be unpredictable.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl Call {
    pub fn new(endpoints: Vec<String>, policy: RetryPolicy) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Setup("no endpoints given".into()));
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        Ok(Self {
            endpoints: Arc::new(endpoints),
            http,
            policy,
            preferred: Arc::new(AtomicUsize::new(0)),
            counter: Arc::new(AtomicU64::new(0)),
            seed,
        })
    }

    /// A fresh key for one logical write: 32 hex digits of process seed and counter.
    fn idempotency_key(&self) -> String {
        let mut state = self.seed
            ^ self
                .counter
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let a = next_random(&mut state);
        let b = next_random(&mut state);
        format!("kvc-{a:016x}{b:016x}")
    }

    /// Sends `method path` until a final answer or the deadline. Connection errors,
    /// 503 and 504 are retried on the next endpoint after a backoff; any other answer is
    /// final and returned as is. A write keeps one Idempotency-Key across its attempts.
    pub async fn run(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        is_write: bool,
    ) -> Result<Attempt, ClientError> {
        let idempotency_key = is_write.then(|| self.idempotency_key());
        let deadline = Instant::now() + self.policy.deadline;
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
            if let Some(key) = &idempotency_key {
                request = request.header("idempotency-key", key);
            }
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(body) = &body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let last = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retryable = status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::GATEWAY_TIMEOUT;
                    match response.bytes().await {
                        Ok(body) if !retryable => {
                            self.preferred.store(index, Ordering::Relaxed);
                            return Ok(Attempt {
                                status,
                                body: body.to_vec(),
                            });
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
            let jitter = 0.5 + (next_random(&mut jitter_state) % 1000) as f64 / 2000.0;
            let pause = backoff.mul_f64(jitter);
            if Instant::now() + pause >= deadline {
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

    #[test]
    fn idempotency_keys_are_unique_and_valid_headers() {
        let call =
            Call::new(vec!["http://127.0.0.1:1".into()], RetryPolicy::default()).expect("client");
        let keys: std::collections::HashSet<String> =
            (0..10_000).map(|_| call.idempotency_key()).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys
            .iter()
            .all(|k| k.len() <= 255 && k.bytes().all(|b| (0x21..=0x7e).contains(&b))));
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
            policy,
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
}
