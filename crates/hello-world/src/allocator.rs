//! The global allocator: mimalloc, called the way the standard library calls `malloc`.
//!
//! The `mimalloc` crate's own `GlobalAlloc` sends every allocation through
//! `mi_malloc_aligned`, whose fast path only fires when the next free block happens to sit at
//! the asked alignment and falls back to a generic path (several hundred instructions) for
//! blocks over 1 KiB, which is where boxed futures land. Like `std`'s `System`, this asks for
//! plain `mi_malloc` whenever the alignment is one mimalloc guarantees anyway: every block of
//! 16 bytes or more is 16-aligned, every smaller one 8-aligned. Only over-aligned types (tokio's
//! cache-padded ones) take the aligned call.
//!
//! [`reserve_small_arenas`] tunes how much address space mimalloc takes at a time, as the
//! binary loads. This module is the only `unsafe` code in the crate.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every mimalloc block of at least this many bytes has (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

/// mimalloc's `mi_option_arena_reserve` (`mimalloc.h`; `libmimalloc-sys` does not name it for
/// mimalloc 3): how much address space an arena reserves, in KiB.
const OPTION_ARENA_RESERVE: mi::mi_option_t = 23;

/// What [`reserve_small_arenas`] sets: 64 MiB, in KiB.
const SMALL_ARENA_KIB: std::ffi::c_long = 64 * 1024;

/// Has mimalloc reserve address space 64 MiB at a time instead of its default 1 GiB. An arena
/// keeps bitmaps sized by its reservation and clears them when it is made: 150 KiB of written
/// memory for 1 GiB, a fifth of an idle server's anonymous RSS (bench/RESULTS.md), for an arena
/// this server never fills. Larger needs get more arenas as they come.
///
/// It runs as the binary loads ([`RESERVE_SMALL_ARENAS`]): the first arena is made by the first
/// allocation, and on glibc `std` allocates before `main` (the main thread's name).
extern "C" fn reserve_small_arenas() {
    // SAFETY: a plain FFI call that stores an option; mimalloc reads it when it makes an arena.
    unsafe { mi::mi_option_set(OPTION_ARENA_RESERVE, SMALL_ARENA_KIB) }
}

/// Runs [`reserve_small_arenas`] among the program's constructors, before `std` starts `main`.
// SAFETY: `.init_array` holds pointers to functions that take and return nothing, run once by
// the C runtime at load; this is one.
#[unsafe(link_section = ".init_array")]
#[used]
static RESERVE_SMALL_ARENAS: extern "C" fn() = reserve_small_arenas;

/// mimalloc as the global allocator (installed by the binary).
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

/// Whether plain `malloc` already returns memory aligned for `layout`.
#[inline]
fn plain_is_aligned(size: usize, align: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every pointer handed out comes from mimalloc, with at least the size and alignment
// asked (`plain_is_aligned` only takes the unaligned calls where mimalloc's own guarantee
// covers the alignment), and is given back to mimalloc's `mi_free`/`mi_realloc*`, which accept
// blocks from any of its allocation calls.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain FFI calls; mimalloc returns null on failure, as `GlobalAlloc` asks.
        let block = unsafe {
            if plain_is_aligned(size, align) {
                mi::mi_malloc(size)
            } else {
                mi::mi_malloc_aligned(size, align)
            }
        };
        block.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        let block = unsafe {
            if plain_is_aligned(size, align) {
                mi::mi_zalloc(size)
            } else {
                mi::mi_zalloc_aligned(size, align)
            }
        };
        block.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: the caller passes a block this allocator returned and a valid new size.
        let block = unsafe {
            if plain_is_aligned(new_size, align) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size)
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, align)
            }
        };
        block.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is ours, not the bindings': it must name the arena reservation, whose
    /// default is 1 GiB (or the small size, if this test binary ran the constructor), and take
    /// the value set.
    #[test]
    fn the_arena_option_is_the_arena_reservation() {
        // SAFETY: plain FFI calls that read an option.
        let before = unsafe { mi::mi_option_get(OPTION_ARENA_RESERVE) };
        assert!(
            before == 1024 * 1024 || before == SMALL_ARENA_KIB,
            "option {OPTION_ARENA_RESERVE} is {before}, not an arena reservation in KiB"
        );
        reserve_small_arenas();
        // SAFETY: as above.
        let after = unsafe { mi::mi_option_get(OPTION_ARENA_RESERVE) };
        assert_eq!(after, SMALL_ARENA_KIB);
    }

    /// Every size up to 4 KiB at every alignment up to 4 KiB, fresh, zeroed and grown: the
    /// block is aligned, usable and (when asked) zeroed.
    #[test]
    fn blocks_have_the_asked_alignment() {
        let allocator = MiMalloc;
        let mut held = Vec::new();
        for align in (0..=12).map(|shift| 1usize << shift) {
            for size in (1..=4096).step_by(7) {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: non-zero sizes; every block is freed below with its layout.
                unsafe {
                    let plain = allocator.alloc(layout);
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert!(!plain.is_null() && !zeroed.is_null());
                    assert_eq!(plain as usize % align, 0, "alloc {size} at {align}");
                    assert_eq!(zeroed as usize % align, 0, "alloc_zeroed {size} at {align}");
                    assert!(
                        std::slice::from_raw_parts(zeroed, size)
                            .iter()
                            .all(|b| *b == 0)
                    );
                    plain.write_bytes(0xa5, size);
                    let grown = allocator.realloc(plain, layout, size * 2);
                    assert_eq!(grown as usize % align, 0, "realloc {size} at {align}");
                    assert!(
                        std::slice::from_raw_parts(grown, size)
                            .iter()
                            .all(|b| *b == 0xa5)
                    );
                    held.push((
                        grown,
                        Layout::from_size_align(size * 2, align).expect("valid"),
                    ));
                    held.push((zeroed, layout));
                }
            }
            for (ptr, layout) in held.drain(..) {
                // SAFETY: allocated above with this layout and not freed yet.
                unsafe { allocator.dealloc(ptr, layout) };
            }
        }
    }
}
