//! `Authorization` on the admin port: the credential read from a header value is one visible
//! ASCII word after a `Bearer` scheme, or nothing.

#![no_main]

use hello_world::admin::bearer_token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(token) = bearer_token(data) {
        assert!(!token.is_empty() && token.iter().all(u8::is_ascii_graphic));
        assert!(data.len() > token.len() + "bearer".len());
        assert!(data[.."bearer".len()].eq_ignore_ascii_case(b"bearer"));
    }
});
