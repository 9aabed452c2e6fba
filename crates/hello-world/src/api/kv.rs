//! The versioned key-value routes: `GET`, `PUT` and `DELETE /api/kv/{key}`.
//!
//! - Keys are 1–256 characters of `A–Z a–z 0–9 . _ : -` (else 400); values are bytes up to
//!   `--value-limit` (else 413), served back as `application/octet-stream` with `nosniff`, so
//!   a browser never renders what a client stored.
//! - Every answer about a value carries `ETag: "<version>"`; versions come from one store-wide
//!   sequence, so an ETag never comes back for a key, even after a delete.
//! - `If-Match` (`*` or a list of ETags) makes `PUT`/`DELETE` conditional and `If-None-Match: *`
//!   makes `PUT` create-only; a condition that does not hold is answered 412 with the current
//!   ETag. The store checks the condition and writes in one atomic step, so concurrent
//!   read-modify-write loops through any replicas lose no update.
//! - `GET` with `If-None-Match` answers 304 when the client's copy is current, with the headers
//!   about caching its 200 would carry (`ETag`, `Cache-Control`).
//! - `PUT` answers 201 when it created the key and 200 when it replaced a value; `DELETE` 204,
//!   or 404 when there was nothing to delete.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use axum::Router;

use super::{AppState, Binary, read_body};
use crate::error::ApiError;
use crate::store::{Condition, Entry, StoreError, Version, entity_tag};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 256;

/// A key as the OpenAPI description gives it: what [`check_key`] accepts.
#[derive(Debug)]
pub struct Key;

impl utoipa::PartialSchema for Key {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_KEY_LEN))
            .pattern(Some("^[A-Za-z0-9._:-]+$"))
            .description(Some(format!(
                "1 to {MAX_KEY_LEN} letters, digits, `.`, `_`, `:`, `-`"
            )))
            .into()
    }
}

impl ToSchema for Key {}

/// `If-Match` and `If-None-Match` as the OpenAPI description gives them: what
/// [`Precondition::parse`] accepts.
#[derive(Debug)]
pub struct EtagList;

impl utoipa::PartialSchema for EtagList {
    fn schema() -> RefOr<Schema> {
        // `*` (repeated, if you like), or strong (`"42"`) and weak (`W/"42"`) tags, with empty
        // items between commas; never both. A tag holds visible ASCII, spaces and tabs but `"`
        // and `,` (which splits the list).
        const TAG: &str = r#"(W/)?"[\t !#-+\--~]*""#;
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!(
                r"^[\t ,]*(\*([\t ]*,[\t ,]*\*)*|{TAG}([\t ]*,[\t ,]*{TAG})*)[\t ,]*$"
            )))
            .description(Some(
                "`*`, or a comma-separated list of entity tags such as `\"42\"` (`W/\"42\"`, weak, \
                 never matches: comparison is strong)",
            ))
            .into()
    }
}

impl ToSchema for EtagList {}

/// How many times a write whose preconditions need a read first (ETag lists, `If-Match` with
/// `If-None-Match`) retries when the key changes between that read and the write.
const PINNED_ATTEMPTS: usize = 3;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/kv/{key}", get(read).put(write).delete(remove))
}

/// A PUT's answer: the key and its new version (the ETag's number).
#[derive(Debug, Serialize, ToSchema)]
struct Written<'a> {
    key: &'a str,
    #[schema(minimum = 1)]
    version: Version,
}

/// The value under a key.
///
/// `If-None-Match` with the current ETag (or `*`) answers 304 instead, with the same caching
/// headers.
#[utoipa::path(
    get,
    path = "/api/kv/{key}",
    operation_id = "get_value",
    tag = "kv",
    params(
        ("key" = inline(Key), Path),
        ("If-None-Match" = inline(Option<EtagList>), Header, description = "`*` or a list of ETags: 304 when one is current"),
    ),
    responses(
        (status = 200, description = "The value, as stored", content_type = "application/octet-stream", body = inline(Binary),
            headers(
                ("ETag" = String, description = "The value's version, quoted: `\"42\"`"),
                ("Cache-Control" = String, description = "`no-cache`: revalidate with If-None-Match"),
                ("X-Content-Type-Options" = String, description = "`nosniff`"),
            )),
        (status = 304, description = "The client's copy is current",
            headers(
                ("ETag" = String, description = "The value's version, quoted"),
                ("Cache-Control" = String, description = "`no-cache`"),
            )),
        (status = 400, description = "A key or an If-None-Match that is not well formed", body = ApiError),
        (status = 404, description = "No value under this key", body = ApiError),
        (status = 503, description = "The store could not serve the call (`reason`)", body = ApiError,
            headers(("Retry-After" = u64, description = "Seconds"))),
    ),
)]
async fn read(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let if_none_match = Precondition::parse(&headers, &header::IF_NONE_MATCH)?;
    let Some(Entry { value, version }) = state.store.get(&key).await? else {
        return Err(absent(&key));
    };
    if if_none_match.is_some_and(|tags| tags.matches(Some(version))) {
        // A 304 carries what its 200 would say about caching (RFC 9110 §15.4.5), so a cache
        // that revalidates keeps the same rules for the copy it keeps.
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        describe_value(response.headers_mut(), version);
        return Ok(response);
    }
    let mut response = Response::new(Body::from(value));
    let headers = response.headers_mut();
    describe_value(headers, version);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(response)
}

/// Stores a value under a key.
///
/// 201 when it created the key, 200 when it replaced a value. `If-Match` (`*` or a list of
/// ETags) makes it conditional on the current version, `If-None-Match: *` create-only; a
/// condition that does not hold is 412 with the current ETag. The check and the write are one
/// atomic step. A value above the server's `--value-limit` (below) is 413.
#[utoipa::path(
    put,
    path = "/api/kv/{key}",
    operation_id = "put_value",
    tag = "kv",
    params(
        ("key" = inline(Key), Path),
        ("If-Match" = inline(Option<EtagList>), Header, description = "`*` or a list of ETags: write only if one is current"),
        ("If-None-Match" = inline(Option<EtagList>), Header, description = "`*`: write only if the key has no value; a list of ETags: only if none is current"),
    ),
    request_body(content = Option<Binary>, content_type = "application/octet-stream", description = "The value: any bytes, none included"),
    responses(
        (status = 200, description = "Replaced", body = Written, headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 201, description = "Created", body = Written,
            headers(
                ("ETag" = String, description = "The new version, quoted"),
                ("Location" = String, description = "`/api/kv/{key}`"),
            )),
        (status = 400, description = "A key or a precondition that is not well formed", body = ApiError),
        (status = 412, description = "A precondition does not hold (`current_etag`)", body = ApiError),
        (status = 413, description = "The value is above the limit (`limit_bytes`)", body = ApiError),
        (status = 503, description = "The store could not serve the call (`reason`)", body = ApiError,
            headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 507, description = "The store is full: reads and deletes still work", body = ApiError),
    ),
)]
async fn write(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let preconditions = Preconditions::parse(&headers)?;
    let value = read_body(&state, body).await?;
    if value.len() > state.config.value_limit {
        return Err(ApiError::payload_too_large(state.config.value_limit));
    }

    let written = pinned(&state, &key, &preconditions, |condition| {
        state.store.put(&key, value.clone(), condition)
    })
    .await?;

    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (
        status,
        Json(Written {
            key: &key,
            version: written.version,
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(written.version));
    if written.created
        && let Ok(location) = HeaderValue::from_str(&format!("/api/kv/{key}"))
    {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Deletes the value under a key.
///
/// 204, or 404 when there was nothing to delete; `If-Match` and `If-None-Match` as for PUT.
#[utoipa::path(
    delete,
    path = "/api/kv/{key}",
    operation_id = "delete_value",
    tag = "kv",
    params(
        ("key" = inline(Key), Path),
        ("If-Match" = inline(Option<EtagList>), Header, description = "`*` or a list of ETags: delete only if one is current"),
        ("If-None-Match" = inline(Option<EtagList>), Header, description = "A list of ETags: delete only if none is current"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A key or a precondition that is not well formed", body = ApiError),
        (status = 404, description = "No value under this key", body = ApiError),
        (status = 412, description = "A precondition does not hold (`current_etag`)", body = ApiError),
        (status = 503, description = "The store could not serve the call (`reason`)", body = ApiError,
            headers(("Retry-After" = u64, description = "Seconds"))),
    ),
)]
async fn remove(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let preconditions = Preconditions::parse(&headers)?;
    let deleted = pinned(&state, &key, &preconditions, |condition| {
        state.store.delete(&key, condition)
    })
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(absent(&key))
    }
}

/// Runs a write (`put` or `delete`) under the request's preconditions: as one atomic store call
/// when one [`Condition`] says the same, else pinned to the version just read (see
/// [`Preconditions::pin`]), read again and retried when the key changed in between, at most
/// [`PINNED_ATTEMPTS`] times.
async fn pinned<'a, T>(
    state: &'a AppState,
    key: &'a str,
    preconditions: &Preconditions,
    write: impl Fn(Condition) -> BoxFuture<'a, Result<T, StoreError>>,
) -> Result<T, ApiError> {
    if let Some(condition) = preconditions.direct() {
        return Ok(write(condition).await?);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = state.store.get(key).await?.map(|entry| entry.version);
        match write(preconditions.pin(current)?).await {
            Err(StoreError::ConditionFailed { current }) if attempt < PINNED_ATTEMPTS => {
                tracing::debug!(?current, attempt, "key changed under a pinned write");
            }
            other => return Ok(other?),
        }
    }
}

/// What a read says about a value, on its 200 and on its 304 alike: the version, and that
/// shared caches may keep it but must ask (`If-None-Match`) before using it.
fn describe_value(headers: &mut HeaderMap, version: Version) {
    headers.insert(header::ETAG, etag(version));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn absent(key: &str) -> ApiError {
    ApiError::not_found("no value under this key").with("key", key)
}

fn etag(version: Version) -> HeaderValue {
    HeaderValue::from_str(&entity_tag(version)).expect("digits in quotes are a header value")
}

/// 400 unless `key` is 1–256 characters of letters, digits, `.`, `_`, `:`, `-`.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    let allowed = |byte: &u8| byte.is_ascii_alphanumeric() || b"._:-".contains(byte);
    if (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|byte| allowed(&byte)) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "key must be 1 to {MAX_KEY_LEN} characters of letters, digits, '.', '_', ':', '-'"
        ))
        .with("max_key_length", MAX_KEY_LEN))
    }
}

/// One `If-Match` or `If-None-Match` header, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `*`: any current value.
    Any,
    /// A list of entity tags. Each is a version, or None for a tag no version of ours can
    /// match (a weak tag, or a tag that is not one of our numbers).
    Tags(Vec<Option<Version>>),
}

impl Precondition {
    /// The header's precondition, if sent; 400 when it is not `*` or a list of quoted tags.
    pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Result<Option<Self>, ApiError> {
        let mut any = false;
        let mut tags = Vec::new();
        let mut seen = false;
        for value in headers.get_all(name) {
            seen = true;
            let text = value.to_str().map_err(|_| invalid(name))?;
            for item in text
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
            {
                if item == "*" {
                    any = true;
                    continue;
                }
                // Strong comparison (RFC 9110 §13.1.1 for If-Match; we use it for both): a weak
                // tag never matches, but it is still a well-formed tag.
                let (weak, quoted) = match item.strip_prefix("W/") {
                    Some(rest) => (true, rest),
                    None => (false, item),
                };
                let inner = quoted
                    .strip_prefix('"')
                    .and_then(|rest| rest.strip_suffix('"'))
                    .filter(|inner| !inner.contains('"'))
                    .ok_or_else(|| invalid(name))?;
                let version = if weak {
                    None
                } else {
                    inner.parse::<Version>().ok()
                };
                tags.push(version);
            }
        }
        match (seen, any, tags.is_empty()) {
            (false, _, _) => Ok(None),
            (true, true, true) => Ok(Some(Precondition::Any)),
            (true, false, false) => Ok(Some(Precondition::Tags(tags))),
            // `*` mixed with tags, or an empty header.
            _ => Err(invalid(name)),
        }
    }

    /// Whether the key's current version satisfies this list.
    pub fn matches(&self, current: Option<Version>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Precondition::Any, Some(_)) => true,
            (Precondition::Tags(tags), Some(version)) => tags.contains(&Some(version)),
        }
    }
}

fn invalid(name: &HeaderName) -> ApiError {
    ApiError::bad_request(format!(
        "{name} must be * or a comma-separated list of quoted ETags such as \"42\""
    ))
}

/// The conditional-request headers of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<Precondition>,
    pub if_none_match: Option<Precondition>,
}

impl Preconditions {
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            if_match: Precondition::parse(headers, &header::IF_MATCH)?,
            if_none_match: Precondition::parse(headers, &header::IF_NONE_MATCH)?,
        })
    }

    /// The one store condition that says the same, when there is one: the common cases (none,
    /// `If-Match: "v"`, `If-Match: *`, `If-None-Match: *`) are one atomic store call.
    pub fn direct(&self) -> Option<Condition> {
        match (&self.if_match, &self.if_none_match) {
            (None, None) => Some(Condition::Always),
            (Some(Precondition::Any), None) => Some(Condition::IfExists),
            (Some(Precondition::Tags(tags)), None) => match tags.as_slice() {
                [Some(version)] => Some(Condition::IfVersion(*version)),
                _ => None,
            },
            (None, Some(Precondition::Any)) => Some(Condition::IfAbsent),
            _ => None,
        }
    }

    /// Evaluates the headers against the version just read (RFC 9110 §13.2.2: If-Match first,
    /// then If-None-Match), and on success returns the condition that pins the write to that
    /// exact state, so the write lands only if nothing changed since the read.
    pub fn pin(&self, current: Option<Version>) -> Result<Condition, ApiError> {
        let refused = || ApiError::from(StoreError::ConditionFailed { current });
        if self
            .if_match
            .as_ref()
            .is_some_and(|tags| !tags.matches(current))
            || self
                .if_none_match
                .as_ref()
                .is_some_and(|tags| tags.matches(current))
        {
            return Err(refused());
        }
        Ok(match current {
            Some(version) => Condition::IfVersion(version),
            None => Condition::IfAbsent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                (*name).clone(),
                HeaderValue::from_str(value).expect("valid"),
            );
        }
        map
    }

    fn parse(name: &HeaderName, value: &str) -> Result<Option<Precondition>, ApiError> {
        Precondition::parse(&headers(&[(name, value)]), name)
    }

    #[test]
    fn keys_are_bounded_and_plain() {
        for good in ["a", "user:42", "a.b_c-d", &"k".repeat(MAX_KEY_LEN)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "é",
            "a%2Fb",
            "..\u{0}",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn etag_lists_parse_with_strong_comparison() {
        let m = &header::IF_MATCH;
        assert_eq!(parse(m, "*").expect("ok"), Some(Precondition::Any));
        assert_eq!(
            parse(m, "\"3\", W/\"4\" ,\"x\"").expect("ok"),
            Some(Precondition::Tags(vec![Some(3), None, None]))
        );
        let tags = parse(m, "\"3\", \"7\"").expect("ok").expect("some");
        assert!(tags.matches(Some(7)));
        assert!(!tags.matches(Some(4)));
        assert!(!tags.matches(None));
        assert!(
            !parse(m, "W/\"4\"")
                .expect("ok")
                .expect("some")
                .matches(Some(4))
        );
        for bad in ["3", "\"3", "*, \"3\"", "\"a\"b\"", ","] {
            assert!(parse(m, bad).is_err(), "{bad}");
        }
        assert_eq!(Precondition::parse(&HeaderMap::new(), m).expect("ok"), None);
    }

    #[test]
    fn common_conditions_map_to_one_store_call() {
        let direct = |pairs: &[(&HeaderName, &str)]| {
            Preconditions::parse(&headers(pairs))
                .expect("valid")
                .direct()
        };
        let (m, n) = (&header::IF_MATCH, &header::IF_NONE_MATCH);
        assert_eq!(direct(&[]), Some(Condition::Always));
        assert_eq!(direct(&[(m, "\"5\"")]), Some(Condition::IfVersion(5)));
        assert_eq!(direct(&[(m, "*")]), Some(Condition::IfExists));
        assert_eq!(direct(&[(n, "*")]), Some(Condition::IfAbsent));
        assert_eq!(direct(&[(m, "\"5\", \"6\"")]), None);
        assert_eq!(direct(&[(n, "\"5\"")]), None);
        assert_eq!(direct(&[(m, "*"), (n, "\"5\"")]), None);
    }

    #[test]
    fn pinned_conditions_follow_the_rfc_order() {
        let pin = |pairs: &[(&HeaderName, &str)], current| {
            Preconditions::parse(&headers(pairs))
                .expect("valid")
                .pin(current)
                .map_err(|err| err.status())
        };
        let (m, n) = (&header::IF_MATCH, &header::IF_NONE_MATCH);
        let failed = Err(StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            pin(&[(m, "\"5\", \"6\"")], Some(6)),
            Ok(Condition::IfVersion(6))
        );
        assert_eq!(pin(&[(m, "\"5\", \"6\"")], Some(7)), failed);
        assert_eq!(pin(&[(m, "\"5\", \"6\"")], None), failed);
        assert_eq!(pin(&[(n, "\"5\"")], Some(5)), failed);
        assert_eq!(pin(&[(n, "\"5\"")], Some(6)), Ok(Condition::IfVersion(6)));
        assert_eq!(pin(&[(n, "\"5\"")], None), Ok(Condition::IfAbsent));
        assert_eq!(pin(&[(m, "*"), (n, "\"5\"")], Some(5)), failed);
        assert_eq!(
            pin(&[(m, "*"), (n, "\"5\"")], Some(8)),
            Ok(Condition::IfVersion(8))
        );
    }
}
