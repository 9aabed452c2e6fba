//! Sizes (`65536`, `64KiB`, `1MB`), as the size settings are written: a number and a unit,
//! never an overflow.

#![no_main]

use hello_world::config::byte_size;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(size) = byte_size(text) {
        // A size is digits and a unit; a number written without one is exactly itself.
        if let Ok(plain) = text.trim().parse::<usize>() {
            assert_eq!(size, plain);
        }
    }
});
