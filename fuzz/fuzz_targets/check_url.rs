//! The check tool's URL argument: an accepted URL has a host, a port other than 0 and a
//! request target that starts with `/`.

#![no_main]

use hello_world::check::parse_target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = parse_target(url) {
        assert!(!target.host.is_empty());
        assert_ne!(target.port, 0);
        assert!(
            target.path.to_string().starts_with('/'),
            "{:?}",
            target.path
        );
    }
});
