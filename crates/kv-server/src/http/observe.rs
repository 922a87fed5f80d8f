//! Every client request's mark: its count and latency by route, method and status for
//! `/metrics`, and one log line at debug level (target `kv_server::access`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Marks an answer relayed from the leader.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded;

/// The method as a label: the ones the API knows, others as one, so a client cannot
/// grow the series without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

pub(crate) async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route pattern, not the path: keys would make a series each.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    let forwarded = response.extensions().get::<Forwarded>().is_some();
    metrics::counter!(
        "quorumkv_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "quorumkv_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method
    )
    .record(took);
    tracing::debug!(
        target: "kv_server::access",
        method,
        route,
        status,
        latency_ms = took.as_secs_f64() * 1000.0,
        forwarded,
        "request"
    );
    response
}
