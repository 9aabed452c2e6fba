//! Durations as clients send them: `/delay/{duration}` (at most the configured maximum), and
//! through it the parser every duration setting uses.

#![no_main]

use std::time::Duration;

use hello_world::api::diagnostics::requested_delay;
use hello_world::config::duration;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = duration(text);
    let max = Duration::from_secs(60);
    match requested_delay(text, max) {
        Ok(wait) => assert!(wait <= max),
        Err(err) => assert_eq!(err.status(), StatusCode::BAD_REQUEST),
    }
});
