//! The shared counter: `GET /api/counter` and `POST /api/counter/increment`, both `{"value": N}`.
//!
//! An increment is atomic across replicas. With an `Idempotency-Key` header (1–128 visible ASCII
//! characters) the increment and the record of its result are one atomic step in the store, so
//! a client that lost the answer may retry through any replica: the retry counts nothing and
//! gets the first result back, marked `idempotent-replayed: true`. Keys are remembered for
//! [`IDEMPOTENCY_RETENTION`](crate::store::IDEMPOTENCY_RETENTION).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use axum::Router;

use super::AppState;
use crate::error::ApiError;

/// The one counter these routes expose, by its name in the store.
const COUNTER: &str = "hits";

/// The request header that makes an increment safe to retry.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header that marks an answer repeated from an earlier request with the same key.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// An idempotency key as the OpenAPI description gives it: what [`idempotency_key`] accepts.
#[derive(Debug)]
pub struct IdempotencyKeyValue;

impl utoipa::PartialSchema for IdempotencyKeyValue {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_IDEMPOTENCY_KEY))
            .pattern(Some("^[!-~]+$"))
            .description(Some(format!(
                "1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters, such as a UUID"
            )))
            .into()
    }
}

impl ToSchema for IdempotencyKeyValue {
    fn name() -> std::borrow::Cow<'static, str> {
        "IdempotencyKey".into()
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/counter", get(read))
        .route("/api/counter/increment", post(increment))
}

/// What both routes answer: the counter's value.
#[derive(Debug, Serialize, ToSchema)]
struct Counter {
    value: i64,
}

/// The shared counter's value.
#[utoipa::path(
    get,
    path = "/api/counter",
    operation_id = "read_counter",
    tag = "counter",
    responses(
        (status = 200, description = "The value", body = Counter),
        (status = 503, description = "The store could not serve the call (`reason`)", body = ApiError,
            headers(("Retry-After" = u64, description = "Seconds"))),
    ),
)]
async fn read(State(state): State<AppState>) -> Result<Response, ApiError> {
    let value = state.store.counter(COUNTER).await?;
    Ok(answer(value, false))
}

/// Adds one to the shared counter, atomically across replicas.
///
/// With an `Idempotency-Key`, the increment and the record of its result are one atomic step:
/// a retry with the same key, through any replica, counts nothing and gets the first answer
/// back, marked `Idempotent-Replayed: true`.
#[utoipa::path(
    post,
    path = "/api/counter/increment",
    operation_id = "increment_counter",
    tag = "counter",
    params(
        ("Idempotency-Key" = inline(Option<IdempotencyKeyValue>), Header,
            description = "Makes the increment safe to retry; one header"),
    ),
    responses(
        (status = 200, description = "The value after the increment", body = Counter,
            headers(("Idempotent-Replayed" = String, description = "`true` when this repeats the answer to an earlier request with the same key"))),
        (status = 400, description = "An Idempotency-Key that is not 1–128 visible ASCII characters, or two of them", body = ApiError),
        (status = 503, description = "The store could not serve the call (`reason`)", body = ApiError,
            headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 507, description = "The store is full (idempotency records take room)", body = ApiError),
    ),
)]
async fn increment(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let step = state.store.increment(COUNTER, key).await?;
    Ok(answer(step.value, step.replayed))
}

fn answer(value: i64, replayed: bool) -> Response {
    let mut response = (
        [(header::CACHE_CONTROL, "no-store")],
        Json(Counter { value }),
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// The request's idempotency key, if any; 400 unless it is one header of 1–128 visible ASCII
/// characters (the key becomes part of a store key, so it is kept plain and bounded).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "send at most one Idempotency-Key header",
        ));
    }
    let bytes = value.as_bytes();
    if !(1..=MAX_IDEMPOTENCY_KEY).contains(&bytes.len()) || !bytes.iter().all(u8::is_ascii_graphic)
    {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    // Visible ASCII is valid UTF-8, so this cannot fail.
    value
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_keys(keys: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for key in keys {
            headers.append(
                IDEMPOTENCY_KEY.clone(),
                HeaderValue::from_bytes(key).expect("a valid header value"),
            );
        }
        headers
    }

    #[test]
    fn idempotency_keys_are_one_bounded_visible_token() {
        assert_eq!(
            idempotency_key(&with_keys(&[])).expect("no key is fine"),
            None
        );
        let uuid = b"6f1c2a0e-3b7d-4c1e-9a57-0d2f6e8b9c41";
        assert_eq!(
            idempotency_key(&with_keys(&[uuid])).expect("a UUID is a fine key"),
            Some("6f1c2a0e-3b7d-4c1e-9a57-0d2f6e8b9c41")
        );
        let longest = [b'k'; MAX_IDEMPOTENCY_KEY];
        assert!(idempotency_key(&with_keys(&[&longest])).is_ok());

        let too_long = [b'k'; MAX_IDEMPOTENCY_KEY + 1];
        for bad in [
            &b""[..],
            &too_long,
            b"has space",
            b"tab\there",
            b"caf\xc3\xa9",
        ] {
            let err = idempotency_key(&with_keys(&[bad])).expect_err("refused");
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(
            idempotency_key(&with_keys(&[b"a", b"b"])).is_err(),
            "two keys are ambiguous"
        );
    }
}
