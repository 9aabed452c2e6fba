//! `If-Match` / `If-None-Match` (kv writes and reads): lines of the input are header values,
//! the first for `If-Match`, the second for `If-None-Match`, alternating after. A list that
//! parses must give the same verdict through its one-call store condition as through the
//! pinned evaluation, for any current version.

#![no_main]

use hello_world::api::kv::Preconditions;
use hello_world::store::Condition;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (index, line) in data.split(|byte| *byte == b'\n').enumerate() {
        let name = if index % 2 == 0 {
            header::IF_MATCH
        } else {
            header::IF_NONE_MATCH
        };
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(name, value);
        }
    }
    let preconditions = match Preconditions::parse(&headers) {
        Ok(preconditions) => preconditions,
        Err(err) => {
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            return;
        }
    };
    for current in [None, Some(0), Some(1), Some(42), Some(u64::MAX)] {
        let pinned = preconditions.pin(current);
        if let Err(err) = &pinned {
            assert_eq!(err.status(), StatusCode::PRECONDITION_FAILED);
        }
        if let Some(condition) = preconditions.direct() {
            let holds = match condition {
                Condition::Always => true,
                Condition::IfVersion(version) => current == Some(version),
                Condition::IfExists => current.is_some(),
                Condition::IfAbsent => current.is_none(),
            };
            assert_eq!(holds, pinned.is_ok(), "{condition:?} at {current:?}");
        }
    }
});
