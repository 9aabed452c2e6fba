//! kv keys (`/api/kv/{key}`): an accepted key is 1–256 characters of letters, digits and
//! `._:-`, so it can never escape its place in a store key.

#![no_main]

use hello_world::api::kv::{MAX_KEY_LEN, check_key};
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    match check_key(key) {
        Ok(()) => {
            assert!((1..=MAX_KEY_LEN).contains(&key.len()));
            assert!(
                key.bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte))
            );
        }
        Err(err) => assert_eq!(err.status(), StatusCode::BAD_REQUEST),
    }
});
