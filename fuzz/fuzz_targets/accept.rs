//! `Accept` negotiation of `GET /`: any header value gets an answer, text or the page, and
//! HTML only when the client names it.

#![no_main]

use hello_world::api::hello::prefers_html;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    if prefers_html(Some(&value)) {
        let text = String::from_utf8_lossy(data).to_ascii_lowercase();
        assert!(text.contains("html"), "{text:?}");
    }
});
