//! `PUT /faults` bodies (admin port): accepted settings are a rate in 0.0–1.0 and at most 30 s
//! of latency; anything else is a 400.

#![no_main]

use std::time::Duration;

use hello_world::admin::{MAX_SETTINGS_BYTES, fault_settings};
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_SETTINGS_BYTES {
        return;
    }
    match fault_settings(data) {
        Ok((rate, latency)) => {
            assert!((0.0..=1.0).contains(&rate));
            assert!(latency <= Duration::from_secs(30));
        }
        Err(err) => assert_eq!(err.status(), StatusCode::BAD_REQUEST),
    }
});
