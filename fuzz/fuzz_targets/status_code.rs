//! `/status/{code}`: an accepted code is a final status, 200–599.

#![no_main]

use hello_world::api::diagnostics::requested_status;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match requested_status(text) {
        Ok(status) => assert!((200..=599).contains(&status.as_u16())),
        Err(err) => assert_eq!(err.status(), StatusCode::BAD_REQUEST),
    }
});
