//! The OpenAPI 3.1 description of the client API, served at `GET /v1/openapi.json` and
//! checked in as `docs/openapi.json`.
//!
//! It is generated from the handlers' `#[utoipa::path]` annotations and the types their
//! requests and answers are read into and written from. The router registers every
//! route from its annotation ([`Routes::add`]), so a route's path and methods cannot
//! differ from its description; the tests below check that every registered route is in
//! [`ApiDoc`], and that `docs/openapi.json` is what the code generates.

use std::sync::{Arc, OnceLock};

use axum::handler::Handler;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi;

use super::error::{Error401, Error405, Error414, Error431, Error500};
use super::{admin, handover, key, members, prefix, session, tokens, App};

/// The description of API v1. Every operation is listed here; `every_route_is_described`
/// keeps this list equal to the router's.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "quorum-kv API v1",
        description = "The client HTTP API of a quorum-kv node. Any node serves every \
            request: a node that does not lead forwards writes and linearizable reads to the \
            leader. With auth on (an `[auth]` section), every route but `/healthz`, \
            `/readyz` and `/v1/openapi.json` needs `Authorization: Bearer <token>`; a node \
            without one takes requests without it. Every error is `{\"error\": {\"code\", \
            \"message\"}}` with a stable code; README lists them.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        key::get_key,
        key::put_key,
        key::delete_key,
        key::get_empty_key,
        key::put_empty_key,
        key::delete_empty_key,
        prefix::list,
        prefix::delete_prefix,
        session::open,
        tokens::create,
        tokens::list,
        tokens::revoke,
        admin::cluster,
        admin::digest,
        admin::backup,
        members::list,
        members::add,
        members::promote,
        members::remove,
        handover::move_leader,
        handover::campaign,
        admin::metrics,
        admin::healthz,
        admin::readyz,
        openapi_json,
    ),
    // 405 is the answer to a method a route does not take, so no operation lists it.
    components(schemas(Error401, Error405, Error414, Error431, Error500)),
    modifiers(&EveryRoute),
    security(("bearer" = [])),
    tags(
        (name = "kv", description = "Keys, prefixes and client sessions"),
        (name = "tokens", description = "Access tokens (admin)"),
        (name = "admin", description = "Cluster status, membership, digests and backups (admin)"),
        (name = "operations", description = "Metrics, liveness and readiness"),
        (name = "meta", description = "This description"),
    )
)]
pub(crate) struct ApiDoc;

/// What the layers in front of every route add to each operation: the bearer scheme, the
/// answers any request can get (`serve::bounded_head`'s 414 and 431, and 500), and
/// `auth::authenticate`'s 401 on every operation that needs a token.
struct EveryRoute;

impl utoipa::Modify for EveryRoute {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token (`kvt_…`) or the bootstrap admin token",
                    ))
                    .build(),
            ),
        );
        let common = [
            (
                "414",
                "`uri_too_long`: the path and query are over 16 KiB",
                "Error414",
            ),
            (
                "431",
                "`headers_too_large`: the headers are over 32 KiB",
                "Error431",
            ),
            ("500", "`internal`: a failure inside the node", "Error500"),
        ];
        let open = SecurityRequirement::default();
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                let needs_token = !op.security.as_ref().is_some_and(|s| s.contains(&open));
                if needs_token {
                    let answer = ResponseBuilder::new()
                        .description("`unauthenticated`: auth is on and no valid token came")
                        .header(
                            "WWW-Authenticate",
                            HeaderBuilder::new()
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .description(Some("`Bearer realm=\"quorum-kv\"`"))
                                .build(),
                        )
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Error401")))
                                .build(),
                        )
                        .build();
                    op.responses
                        .responses
                        .entry("401".to_owned())
                        .or_insert(RefOr::T(answer));
                }
                for (status, description, schema) in common {
                    let answer = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name(schema)))
                                .build(),
                        )
                        .build();
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(RefOr::T(answer));
                }
            }
        }
    }
}

/// The operations of a path item, with their methods.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The document as served and checked in: pretty JSON with a final newline, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the description serializes");
        // utoipa 6 spells the unsigned formats in kebab case (`u-int64`); the OpenAPI
        // format registry's name is `uint64`.
        let mut text = text.replace("\"format\": \"u-int", "\"format\": \"uint");
        text.push('\n');
        text
    })
}

/// The shape of an OpenAPI 3.1 document, as far as this description says.
struct OpenApiDocument;

impl utoipa::PartialSchema for OpenApiDocument {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "openapi",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^3\.1\.\d+$")),
            )
            .required("openapi")
            .property("info", ObjectBuilder::new().schema_type(Type::Object))
            .required("info")
            .property("paths", ObjectBuilder::new().schema_type(Type::Object))
            .required("paths")
            .into()
    }
}

impl utoipa::ToSchema for OpenApiDocument {}

/// `GET /v1/openapi.json`: this description. Open like `/healthz`: it is the same for
/// every deployment and holds no secret.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 description of API v1.",
        body = OpenApiDocument))
)]
pub(crate) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// The router's routes, each registered from its handler's description.
pub(crate) struct Routes {
    pub router: Router<Arc<App>>,
    /// Every (path, method) registered, as the description names them.
    pub registered: Vec<(String, HttpMethod)>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self {
            router: Router::new(),
            registered: Vec::new(),
        }
    }

    /// Registers `handler` at the path and methods of its description `P`.
    pub(crate) fn add<P: utoipa::Path, H: Handler<T, Arc<App>>, T: 'static>(
        self,
        handler: H,
    ) -> Self {
        let path = P::path();
        self.add_at::<P, H, T>(&path, handler)
    }

    /// Registers `handler` like [`Routes::add`], with its path parameter `param` taking
    /// the rest of the path, `/` included (axum's `{*param}`).
    pub(crate) fn add_rest<P: utoipa::Path, H: Handler<T, Arc<App>>, T: 'static>(
        self,
        param: &str,
        handler: H,
    ) -> Self {
        let described = P::path();
        let placeholder = format!("{{{param}}}");
        assert!(
            described.ends_with(&placeholder),
            "{described} does not end with {placeholder}"
        );
        let path = described.replace(&placeholder, &format!("{{*{param}}}"));
        self.add_at::<P, H, T>(&path, handler)
    }

    fn add_at<P: utoipa::Path, H: Handler<T, Arc<App>>, T: 'static>(
        mut self,
        path: &str,
        handler: H,
    ) -> Self {
        let mut filter: Option<MethodFilter> = None;
        for method in P::methods() {
            let one = method_filter(&method);
            filter = Some(filter.map_or(one, |f| f.or(one)));
            self.registered.push((P::path(), method));
        }
        let filter = filter.expect("a described operation has a method");
        self.router = self.router.route(path, on(filter, handler));
        self
    }
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method_name(method: &HttpMethod) -> &'static str {
        match method {
            HttpMethod::Get => "get",
            HttpMethod::Post => "post",
            HttpMethod::Put => "put",
            HttpMethod::Delete => "delete",
            HttpMethod::Options => "options",
            HttpMethod::Head => "head",
            HttpMethod::Patch => "patch",
            HttpMethod::Trace => "trace",
        }
    }

    #[test]
    fn every_route_is_described_and_every_description_is_a_route() {
        let mut registered: Vec<(String, &str)> = super::super::routes()
            .registered
            .iter()
            .map(|(path, method)| (path.clone(), method_name(method)))
            .collect();
        registered.sort();
        let doc: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        let mut described: Vec<(String, &str)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                if item.get(method).is_some() {
                    described.push((path.clone(), method));
                }
            }
        }
        described.sort();
        assert_eq!(
            registered, described,
            "the router's routes and ApiDoc's paths must be the same"
        );
    }

    #[test]
    fn the_checked_in_description_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        if std::env::var_os("KV_WRITE_OPENAPI").is_some() {
            std::fs::write(path, document()).expect("docs/openapi.json is writable");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == document(),
            "docs/openapi.json is not the description the code generates; regenerate it \
             with `KV_WRITE_OPENAPI=1 cargo test -p kv-server checked_in_description` (or \
             `kv-server openapi > docs/openapi.json`) and review the diff"
        );
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        let schemas = doc["components"]["schemas"]
            .as_object()
            .expect("component schemas");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} is not a component schema"));
            assert!(schemas.contains_key(name), "{r} is not defined");
        }
    }

    #[test]
    fn operation_ids_are_unique_and_links_name_them() {
        let doc: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        let mut ids = Vec::new();
        let mut linked = Vec::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("a path item").values() {
                ids.push(
                    op["operationId"]
                        .as_str()
                        .expect("an operationId")
                        .to_owned(),
                );
                for answer in op["responses"].as_object().expect("responses").values() {
                    if let Some(links) = answer.get("links").and_then(|l| l.as_object()) {
                        for link in links.values() {
                            linked.push(link["operationId"].as_str().expect("an id").to_owned());
                        }
                    }
                }
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operationIds repeat: {ids:?}");
        assert!(!linked.is_empty());
        for id in linked {
            assert!(
                ids.contains(&id),
                "a link names {id}, which is no operation"
            );
        }
    }

    fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_description_is_openapi_3_1_with_a_bearer_scheme() {
        let doc: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["schemas"]["Entry"]["properties"]["revision"]["format"],
            "uint64"
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([{}])
        );
    }
}
