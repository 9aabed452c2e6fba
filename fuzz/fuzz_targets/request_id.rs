//! `x-request-id`: whatever a client sends, the id every answer and log line carries is 1–128
//! visible ASCII characters, the client's own when it was one.

#![no_main]

use hello_world::observe::{X_REQUEST_ID, request_id};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    let id = request_id(&headers);
    let bytes = id.as_bytes();
    assert!((1..=128).contains(&bytes.len()));
    assert!(bytes.iter().all(u8::is_ascii_graphic));
    if (1..=128).contains(&data.len()) && data.iter().all(u8::is_ascii_graphic) {
        assert_eq!(bytes, data);
    }
});
