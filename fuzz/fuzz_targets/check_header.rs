//! The check tool's `-H "Name: value"` arguments: an accepted line is a valid header name, a
//! colon, and a value without the spaces around it.

#![no_main]

use hello_world::check::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((name, value)) = parse_header(line) {
        assert!(line.contains(':'));
        assert!(!name.as_str().is_empty());
        let bytes = value.as_bytes();
        assert!(bytes.first().is_none_or(|byte| *byte != b' '));
        assert!(bytes.last().is_none_or(|byte| *byte != b' '));
    }
});
