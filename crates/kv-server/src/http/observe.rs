//! Every client request's mark: its count and latency by route, method and status for
//! `/metrics`, and one log line at debug level (target `kv_server::access`).

use std::cell::RefCell;
use std::collections::HashMap;
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

/// One series of requests and of their latency.
#[derive(Clone)]
struct Series {
    requests: metrics::Counter,
    latency: metrics::Histogram,
}

/// The series by route, then by method and status, looked up in the registry once per
/// worker thread: by labels on every request, that would allocate the labels, search
/// the registry and share a lock between the cores.
type SeriesByRoute = HashMap<String, HashMap<(&'static str, u16), Series>>;

thread_local! {
    static SERIES: RefCell<SeriesByRoute> = RefCell::new(HashMap::new());
}

fn series(route: &str, method: &'static str, status: u16) -> Series {
    let known =
        SERIES.with_borrow(|m| m.get(route).and_then(|m| m.get(&(method, status))).cloned());
    if let Some(s) = known {
        return s;
    }
    let s = Series {
        requests: metrics::counter!(
            "quorumkv_http_requests_total",
            "route" => route.to_owned(),
            "method" => method,
            "status" => status.to_string()
        ),
        latency: metrics::histogram!(
            "quorumkv_http_request_duration_seconds",
            "route" => route.to_owned(),
            "method" => method
        ),
    };
    SERIES.with_borrow_mut(|m| {
        m.entry(route.to_owned())
            .or_default()
            .insert((method, status), s.clone())
    });
    s
}

pub(crate) async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route pattern, not the path: keys would make a series each.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("other", |p| p.as_str());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    let forwarded = response.extensions().get::<Forwarded>().is_some();
    let s = series(route, method, status);
    s.requests.increment(1);
    s.latency.record(took);
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
