//! Large blocks freed inside a loop of equal steps, kept for the next step's equal requests.
//!
//! A band loop (the tiled VAE's) allocates the same buffers for every band and frees them at
//! its end; each fresh block costs the kernel a fault and a zeroed page per page touched:
//! 14.9% of a 1024² tiled decode (`perf`, AMD EPYC, before this). [`Recycler`], the binary's
//! global allocator, keeps blocks of 1 MiB or more freed inside [`recycling`] and hands them
//! back to requests of the same alignment and a size they fit (at most 1/8 larger); a request
//! none fits first frees every kept block. So a kept block is idle only between its free and
//! the next large request, and no fresh block is ever allocated beside an idle one: the loop's
//! peak does not grow. Outside a scope, and when the scope closes, everything goes to the
//! system allocator as before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks smaller than this go straight to the system allocator.
const LARGE: usize = 1 << 20;
/// Kept blocks at most (a band's buffers: input rows, laid-out input, output, residual...).
const SLOTS: usize = 8;

#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    size: usize,
    align: usize,
}

/// Open [`recycling`] scopes (nested scopes count once each).
static SCOPES: AtomicUsize = AtomicUsize::new(0);
static KEPT: Mutex<[Option<Block>; SLOTS]> = Mutex::new([None; SLOTS]);

/// The global allocator that recycles inside [`recycling`]: `#[global_allocator] static A:
/// Recycler = Recycler;` in a binary. Without it [`recycling`] changes nothing.
pub struct Recycler;

fn kept() -> std::sync::MutexGuard<'static, [Option<Block>; SLOTS]> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A kept block for `layout`, or none (then every kept block is freed first).
fn take(layout: Layout) -> Option<*mut u8> {
    let mut kept = kept();
    let n = layout.size();
    let fits = |b: &Block| b.align == layout.align() && b.size >= n && b.size - n <= n / 8;
    if let Some(slot) = kept.iter_mut().find(|b| b.as_ref().is_some_and(fits)) {
        return slot.take().map(|b| b.ptr as *mut u8);
    }
    free_all(&mut kept);
    None
}

fn free_all(kept: &mut [Option<Block>; SLOTS]) {
    for b in kept.iter_mut().filter_map(Option::take) {
        // SAFETY: a block the system allocator gave with this size and alignment, not in use.
        unsafe {
            let layout = Layout::from_size_align_unchecked(b.size, b.align);
            System.dealloc(b.ptr as *mut u8, layout)
        };
    }
}

/// Keep `ptr` if a slot is free; whether it was kept.
fn keep(ptr: *mut u8, layout: Layout) -> bool {
    let mut kept = kept();
    match kept.iter_mut().find(|b| b.is_none()) {
        Some(slot) => {
            *slot = Some(Block {
                ptr: ptr as usize,
                size: layout.size(),
                align: layout.align(),
            });
            true
        }
        None => false,
    }
}

fn in_scope(layout: Layout) -> bool {
    layout.size() >= LARGE && SCOPES.load(Ordering::Relaxed) > 0
}

// SAFETY: every block handed out is one the system allocator gave (fresh, or kept after a
// free) with the alignment asked and at least the size asked; the system allocator frees and
// resizes a block whatever size its layout names (glibc's `free` and `realloc` know it).
unsafe impl GlobalAlloc for Recycler {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_scope(layout) {
            if let Some(ptr) = take(layout) {
                return ptr;
            }
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if in_scope(layout) {
            if let Some(ptr) = take(layout) {
                ptr.write_bytes(0, layout.size());
                return ptr;
            }
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_scope(layout) && keep(ptr, layout) {
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        System.realloc(ptr, layout, new_size)
    }
}

/// Run `f` (a loop whose steps allocate alike) recycling large blocks; every block kept is
/// freed when the outermost scope closes, also on a panic.
pub fn recycling<R>(f: impl FnOnce() -> R) -> R {
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            if SCOPES.fetch_sub(1, Ordering::Relaxed) == 1 {
                free_all(&mut kept());
            }
        }
    }
    SCOPES.fetch_add(1, Ordering::Relaxed);
    let _close = Close;
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_blocks() -> usize {
        kept().iter().flatten().count()
    }

    /// Called directly (this test binary keeps the system allocator as its own).
    #[test]
    fn blocks_come_back_to_requests_they_fit_and_a_miss_frees_them() {
        let big = |n: usize| Layout::from_size_align(n, 4).unwrap();
        let a = Recycler;
        unsafe {
            // Outside a scope nothing is kept.
            let p = a.alloc(big(2 << 20));
            a.dealloc(p, big(2 << 20));
            assert_eq!(kept_blocks(), 0);
            recycling(|| {
                let p = a.alloc(big(2 << 20));
                p.write_bytes(7, 2 << 20);
                a.dealloc(p, big(2 << 20));
                assert_eq!(kept_blocks(), 1);
                // Up to an eighth smaller: the same block, zeroed when asked.
                let q = a.alloc_zeroed(big((2 << 20) - (200 << 10)));
                assert_eq!(q, p);
                assert!(std::slice::from_raw_parts(q, 1 << 20)
                    .iter()
                    .all(|&b| b == 0));
                let other = a.alloc(big(3 << 19));
                a.dealloc(q, big((2 << 20) - (200 << 10)));
                a.dealloc(other, big(3 << 19));
                assert_eq!(kept_blocks(), 2);
                // Much smaller, or larger: a fresh block, and nothing kept idle beside it.
                let r = a.alloc(big(1 << 20));
                assert_eq!(kept_blocks(), 0);
                a.dealloc(r, big(1 << 20));
                let s = a.alloc(big(3 << 20));
                assert_eq!(kept_blocks(), 0);
                a.dealloc(s, big(3 << 20));
                // Small blocks are never kept.
                let t = a.alloc(big(4096));
                a.dealloc(t, big(4096));
                assert_eq!(kept_blocks(), 1);
            });
            // Closing the scope frees what was kept.
            assert_eq!(kept_blocks(), 0);
        }
    }
}
