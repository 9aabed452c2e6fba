//! `GET /openapi.json`: the OpenAPI 3.1 description of the public port.
//!
//! It is generated from the code: each handler's `#[utoipa::path]` annotation, and the schemas
//! of the types it serializes (`ToSchema`). [`document`] completes it with what the middleware
//! gives every route ([`crate::observe`]: the `x-request-id` a client may send, the headers every
//! answer carries, 413 for a body past the limit) and with this server's own limits, once, when
//! the server starts; the route serves those bytes.
//!
//! The admin port is not in it: it is never exposed. gRPC and the WebSocket are described as far
//! as OpenAPI can: their HTTP envelope (a gRPC call is a `POST` of `application/grpc` over
//! HTTP/2; the WebSocket, an HTTP/1.1 upgrade).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, header};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::{AppState, counter, diagnostics, grpc, hello, info, kv, probes, ws};
use crate::config::Config;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(describe))
}

/// What the description says of the whole API, before its routes.
const OVERVIEW: &str = "\
The public port of hello-world: the `Hello World!` web service, its probes, a shared counter \
and a versioned key-value store (both consistent across replicas), and routes for poking at the \
system from outside.

Every answer carries `x-served-by` (the replica), `x-version`, `x-request-id` (the client's, \
when it sends 1 to 128 visible ASCII characters, else a fresh one) and, when the replica knows \
its machine, `x-node`. Every error is JSON (the `Error` schema), 404 for an unknown path and \
405 (with `Allow`) for a method a path does not take included. Besides the answers each route \
lists: a request whose `Content-Length` is above `--body-limit` gets 413 before its body is \
read; an HTTP/1.1 request without `Host`, or one with two, 400; a request still running after \
`--request-timeout` 503; and an operator may inject faults (500, latency) into every route but \
the probes, from the admin port, which this description leaves out.

gRPC (`grpc.health.v1.Health`, over HTTP/2) and the WebSocket echo (an HTTP/1.1 upgrade) are \
described as far as OpenAPI can: their HTTP envelope.";

#[derive(OpenApi)]
#[openapi(
    info(title = "hello-world", description = OVERVIEW, license(name = "Apache-2.0")),
    paths(
        hello::hello,
        probes::healthz,
        probes::readyz,
        info::info,
        info::version,
        diagnostics::status,
        diagnostics::delay,
        diagnostics::headers,
        diagnostics::echo,
        counter::read,
        counter::increment,
        kv::read,
        kv::write,
        kv::remove,
        grpc::check,
        grpc::watch,
        ws::upgrade,
        describe,
    )
)]
struct Description;

/// This description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "openapi",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI description of the public port", body = inline(Document))),
)]
async fn describe(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.openapi.clone(),
    )
        .into_response()
}

/// An OpenAPI 3.1 document, as far as this description says.
#[derive(Debug)]
struct Document;

impl utoipa::PartialSchema for Document {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "openapi",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^3\.1\.[0-9]+$")),
            )
            .required("openapi")
            .property("info", ObjectBuilder::new().schema_type(Type::Object))
            .required("info")
            .property("paths", ObjectBuilder::new().schema_type(Type::Object))
            .required("paths")
            .into()
    }
}

impl utoipa::ToSchema for Document {}

/// The description of the public port as this server (its `config`) answers, as JSON.
pub fn document(config: &Config) -> bytes::Bytes {
    let mut openapi = Description::openapi();
    openapi.info.version = crate::VERSION.to_owned();
    let mut document = serde_json::to_value(&openapi).unwrap_or_else(|_| json!({}));
    add_middleware(&mut document);
    add_limits(&mut document, config);
    bytes::Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
}

/// The HTTP methods an OpenAPI path item may hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The headers [`crate::observe`] puts on every answer: name, whether always, what it says.
const STAMPS: [(&str, bool, &str); 4] = [
    (
        "x-served-by",
        true,
        "The replica that answered (`--instance-name`)",
    ),
    ("x-version", true, "The version it runs"),
    (
        "x-request-id",
        true,
        "The request's id: the client's when sane, else a fresh one",
    ),
    (
        "x-node",
        false,
        "The machine the replica runs on, when the orchestrator says (`NODE_NAME`)",
    ),
];

/// What [`crate::observe`] adds to every route: the `x-request-id` parameter, the headers on
/// every answer, 413 on every route that takes a body; and a distinct `operationId` for `HEAD /`,
/// which shares its handler (and so its id) with `GET /`. Shared parts are components, referred
/// to from each route.
fn add_middleware(document: &mut Value) {
    let components = document
        .as_object_mut()
        .map(|document| document.entry("components").or_insert_with(|| json!({})));
    if let Some(Value::Object(components)) = components {
        components.insert(
            "parameters".to_owned(),
            json!({"RequestId": {
                "name": "x-request-id",
                "in": "header",
                "required": false,
                "description": "An id for this request, sent back in `x-request-id` and logged: \
                    kept when it is 1 to 128 visible ASCII characters, else replaced by a fresh one",
                "schema": {"type": "string"},
            }}),
        );
        let headers: Map<String, Value> = STAMPS
            .iter()
            .map(|(name, required, description)| {
                let header = json!({
                    "required": required,
                    "description": description,
                    "schema": {"type": "string"},
                });
                ((*name).to_owned(), header)
            })
            .collect();
        components.insert("headers".to_owned(), Value::Object(headers));
    }
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        item.insert(
            "parameters".to_owned(),
            json!([{"$ref": "#/components/parameters/RequestId"}]),
        );
        for (method, operation) in item.iter_mut() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            if method == "head"
                && let Some(Value::String(id)) = operation.get_mut("operationId")
            {
                id.push_str("_head");
            }
            if let Some(Value::Array(parameters)) = operation.get_mut("parameters") {
                parameters.iter_mut().for_each(never_null);
            }
            let takes_body = operation.contains_key("requestBody");
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if takes_body && !responses.contains_key("413") {
                responses.insert(
                    "413".to_owned(),
                    json!({
                        "description": "The body is above `--body-limit` (`limit_bytes`)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }),
                );
            }
            for response in responses.values_mut() {
                stamp(response);
            }
        }
    }
}

/// An optional parameter is one a request may leave out, never one it sends as `null` (which
/// utoipa says of an `Option`): a header or a path segment is text or absent.
fn never_null(parameter: &mut Value) {
    let Some(schema) = parameter.get_mut("schema") else {
        return;
    };
    let Some(Value::Array(choices)) = schema.get_mut("oneOf") else {
        return;
    };
    choices.retain(|choice| choice != &json!({"type": "null"}));
    if let [only] = choices.as_slice() {
        *schema = only.clone();
    }
}

/// The headers [`crate::observe`] puts on every answer, by reference to the components.
fn stamp(response: &mut Value) {
    let Some(response) = response.as_object_mut() else {
        return;
    };
    let headers = response
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(headers) = headers.as_object_mut() else {
        return;
    };
    for (name, _, _) in STAMPS {
        headers.insert(
            name.to_owned(),
            json!({"$ref": format!("#/components/headers/{name}")}),
        );
    }
}

/// This server's limits, in the descriptions of the routes they bound.
fn add_limits(document: &mut Value, config: &Config) {
    let size = |bytes: usize| format!("{bytes} bytes");
    let delay = humantime::format_duration(config.max_delay).to_string();
    let value_limit = config.value_limit.min(config.body_limit);
    for (path, method, limit) in [
        ("/delay/{duration}", "get", format!("at most {delay}")),
        (
            "/api/echo",
            "post",
            format!("a body of at most {}", size(config.body_limit)),
        ),
        (
            "/api/kv/{key}",
            "put",
            format!("a value of at most {}", size(value_limit)),
        ),
    ] {
        let Some(operation) = document
            .pointer_mut(&format!("/paths/{}/{method}", path.replace('/', "~1")))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let description = operation
            .entry("description")
            .or_insert_with(|| Value::String(String::new()));
        if let Value::String(text) = description {
            text.push_str(&format!("\n\nOn this server: {limit}."));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use super::*;

    fn described(config: &Config) -> Value {
        serde_json::from_slice(&document(config)).expect("the description is JSON")
    }

    /// Every route call in `src/api/` (a path and its method router), as path → methods, read from the
    /// source: the router is built from these calls, and axum cannot list its routes.
    fn routes_in_the_source() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("src/api is readable") {
            let path = entry.expect("an entry").path();
            let source = std::fs::read_to_string(&path).expect("a source file");
            for call in source.split(".route(\"").skip(1) {
                let (route, rest) = call.split_once('"').expect("a quoted path");
                // The method router ends where the call's parentheses close.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|(_, c)| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(rest.len(), |(at, _)| at);
                let methods = &rest[..end];
                let found: BTreeSet<String> = METHODS
                    .iter()
                    .filter(|method| {
                        methods.contains(&format!(" {method}("))
                            || methods.contains(&format!(".{method}("))
                    })
                    .map(|method| (*method).to_owned())
                    .collect();
                assert!(
                    !found.is_empty(),
                    "{}: no method for {route}",
                    path.display()
                );
                routes.entry(route.to_owned()).or_default().extend(found);
            }
        }
        routes
    }

    #[test]
    fn every_route_of_the_public_router_is_described_and_nothing_else() {
        let document = described(&Config::for_tests("test"));
        let paths = document["paths"].as_object().expect("paths");
        let in_source = routes_in_the_source();
        assert!(in_source.len() >= 16, "the scan found {in_source:?}");
        let mut in_description: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, item) in paths {
            let methods = METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (*method).to_owned())
                .collect();
            in_description.insert(path.clone(), methods);
        }
        // axum answers HEAD with every GET route; the description names it where it is meant.
        in_description
            .values_mut()
            .for_each(|methods| _ = methods.remove("head"));
        assert_eq!(in_source, in_description);
    }

    #[test]
    fn the_description_is_openapi_3_1_with_unique_ids_and_no_dangling_reference() {
        let document = described(&Config::for_tests("test"));
        let version = document["openapi"].as_str().expect("openapi");
        assert!(version.starts_with("3.1."), "{version}");
        assert_eq!(document["info"]["version"], crate::VERSION);

        let mut ids = BTreeSet::new();
        for item in document["paths"].as_object().expect("paths").values() {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    let id = operation["operationId"].as_str().expect("an operationId");
                    assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                    assert!(
                        operation["responses"]
                            .as_object()
                            .is_some_and(|r| !r.is_empty()),
                        "{id} has no responses"
                    );
                }
            }
        }

        fn references(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        found.push(target.clone());
                    }
                    map.values().for_each(|value| references(value, found));
                }
                Value::Array(items) => items.iter().for_each(|value| references(value, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{target} points nowhere"
            );
        }
    }

    #[test]
    fn every_answer_names_the_middleware_headers_and_every_header_parameter_is_text() {
        let document = described(&Config::for_tests("test"));
        for (path, item) in document["paths"].as_object().expect("paths") {
            assert_eq!(
                item["parameters"][0]["$ref"], "#/components/parameters/RequestId",
                "{path}"
            );
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                for (status, response) in operation["responses"].as_object().expect("responses") {
                    for (name, always, _) in STAMPS {
                        assert!(
                            response["headers"].get(name).is_some(),
                            "{method} {path} {status}: no {name}"
                        );
                        assert_eq!(document["components"]["headers"][name]["required"], always);
                    }
                }
                let parameters = operation["parameters"].as_array().into_iter().flatten();
                for parameter in parameters.filter(|parameter| parameter["in"] == "header") {
                    assert_eq!(parameter["schema"]["type"], "string", "{parameter}");
                }
                if operation.get("requestBody").is_some() {
                    assert!(operation["responses"].get("413").is_some(), "{path}");
                }
            }
        }
    }

    #[test]
    fn the_description_says_this_servers_limits() {
        let mut config = Config::for_tests("test");
        config.max_delay = Duration::from_millis(1500);
        config.body_limit = 4096;
        config.value_limit = 1024;
        let document = described(&config);
        let description = |pointer: &str| {
            document
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no {pointer}"))
                .to_owned()
        };
        assert!(
            description("/paths/~1delay~1{duration}/get/description").contains("at most 1s 500ms")
        );
        assert!(description("/paths/~1api~1echo/post/description").contains("at most 4096 bytes"));
        assert!(
            description("/paths/~1api~1kv~1{key}/put/description").contains("at most 1024 bytes")
        );
    }

    #[test]
    fn keys_and_idempotency_keys_are_described_as_their_parsers_read_them() {
        let document = described(&Config::for_tests("test"));
        let parameter = |path: &str, name: &str| {
            document["paths"][path]
                .as_object()
                .into_iter()
                .flat_map(|item| item.values())
                .filter_map(|operation| operation.get("parameters"))
                .flat_map(|parameters| parameters.as_array().into_iter().flatten())
                .find(|parameter| parameter["name"] == name)
                .unwrap_or_else(|| panic!("no {name} on {path}"))
                .clone()
        };
        let key = parameter("/api/kv/{key}", "key");
        assert_eq!(key["schema"]["maxLength"], kv::MAX_KEY_LEN);
        let idempotency = parameter("/api/counter/increment", "Idempotency-Key");
        assert_eq!(
            idempotency["schema"]["maxLength"],
            counter::MAX_IDEMPOTENCY_KEY
        );
        let etags = parameter("/api/kv/{key}", "If-Match");
        assert!(etags["schema"]["pattern"].is_string(), "{etags}");
    }
}
