//! `Idempotency-Key` (`POST /api/counter/increment`): each line of the input is one header
//! value; an accepted key is the one header sent, 1–128 visible ASCII characters.

#![no_main]

use hello_world::api::counter::{IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY, idempotency_key};
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|byte| *byte == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(IDEMPOTENCY_KEY.clone(), value);
        }
    }
    match idempotency_key(&headers) {
        Ok(None) => assert!(headers.is_empty()),
        Ok(Some(key)) => {
            assert_eq!(headers.len(), 1);
            assert!((1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()));
            assert!(key.bytes().all(|byte| byte.is_ascii_graphic()));
        }
        Err(err) => assert_eq!(err.status(), StatusCode::BAD_REQUEST),
    }
});
