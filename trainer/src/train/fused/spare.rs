//! The f32 buffers a thread's fused passes are done with, kept for its
//! next ones, so that a step's activations and gradients reuse the last
//! step's memory without zeroing it again.
//!
//! `vec![0.0; n]` asks the allocator for zeroed memory, and after the
//! first step that memory is always reused, so every activation and
//! gradient buffer was cleared before a product overwrote it: 6% of a
//! one-thread step of the tiny preset (perf). A buffer taken with
//! [`for_output`] holds whatever its last user left, so it is only for
//! outputs written in full before they are read (a product with
//! `accumulate` false, a norm, an element-wise kernel); [`zeroed`] is for
//! those added into. In debug builds [`for_output`] fills the buffer with
//! NaN, so a value read before it is written poisons the tests' losses
//! and gradients instead of passing unseen.
//!
//! Recycling is on only inside a [`Recycling`] scope that turns it on;
//! elsewhere buffers come zeroed from the allocator and [`give_back`]
//! frees them. The fused step turns it on unless its products run on AMX
//! tiles: there a step on recycled buffers ran 3-6% slower than on fresh
//! zeroed ones (the tile products and the packers that read activations
//! slowed by more than the zeroing saved; docs/PERFORMANCE.md).
//!
//! Each thread keeps the buffers given back to it until its next pass
//! takes them, at most [`KEPT_BUFFERS`] of them: about one pass's
//! activations, which the next pass on that thread needs again. A
//! training run frees them all when it ends ([`release`], through
//! `super::release_spare_buffers`), so a worker between jobs holds none.
//! Not here: what goes in the buffers (`super::layer`, `super`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// At most this many buffers wait per thread: every buffer of a
/// 32-layer model's pass with room to spare (about 30 per layer).
pub const KEPT_BUFFERS: usize = 2_048;

#[derive(Default)]
struct Kept {
    /// By length: buffers of that many values.
    by_len: BTreeMap<usize, Vec<Vec<f32>>>,
}

impl Kept {
    /// How many buffers wait, summed over the lengths kept (a few dozen
    /// lengths in a model's pass).
    fn count(&self) -> usize {
        self.by_len.values().map(Vec::len).sum()
    }
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::default();
    static RECYCLING: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, this thread recycles buffers (with `on`) or takes
/// them zeroed from the allocator (without); dropped, it restores the
/// setting before it.
pub struct Recycling {
    before: bool,
}

impl Recycling {
    pub fn set(on: bool) -> Recycling {
        Recycling {
            before: RECYCLING.replace(on),
        }
    }
}

impl Drop for Recycling {
    fn drop(&mut self) {
        RECYCLING.set(self.before);
    }
}

/// A buffer given back on this thread of `len` to `len + len / 4` values,
/// cut to `len`.
fn reused(len: usize) -> Option<Vec<f32>> {
    if !RECYCLING.get() {
        return None;
    }
    KEPT.with_borrow_mut(|kept| {
        let (&found, _) = kept.by_len.range(len..=len + len / 4).next()?;
        let same = kept.by_len.get_mut(&found)?;
        let mut v = same.pop()?;
        if same.is_empty() {
            kept.by_len.remove(&found);
        }
        v.truncate(len);
        Some(v)
    })
}

/// A buffer of `len` values that the caller writes in full before reading
/// any: one given back, or new.
pub fn for_output(len: usize) -> Vec<f32> {
    let mut v = reused(len).unwrap_or_else(|| vec![0.0; len]);
    if cfg!(debug_assertions) {
        v.fill(f32::NAN);
    }
    v
}

/// A buffer holding a copy of `src`.
pub fn copy_of(src: &[f32]) -> Vec<f32> {
    let mut v = for_output(src.len());
    v.copy_from_slice(src);
    v
}

/// A buffer of `len` zeros, for sums added into.
pub fn zeroed(len: usize) -> Vec<f32> {
    match reused(len) {
        Some(mut v) => {
            v.fill(0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// Keeps `v` for this thread's next [`for_output`] or [`zeroed`] while
/// recycling, up to [`KEPT_BUFFERS`]; frees it otherwise.
pub fn give_back(v: Vec<f32>) {
    if v.is_empty() || !RECYCLING.get() {
        return;
    }
    KEPT.with_borrow_mut(|kept| {
        if kept.count() < KEPT_BUFFERS {
            kept.by_len.entry(v.len()).or_default().push(v);
        }
    });
}

/// Frees every buffer this thread keeps.
pub fn release() {
    KEPT.take();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_reused_at_its_length_and_zeroed_on_request() {
        let _on = Recycling::set(true);
        let mut v = for_output(1_000);
        v.fill(3.0);
        let at = v.as_ptr();
        give_back(v);
        // Close enough in length: the same memory, cut to the request.
        let again = for_output(900);
        assert_eq!((again.as_ptr(), again.len()), (at, 900));
        give_back(again);
        let zeros = zeroed(900);
        assert_eq!(zeros.as_ptr(), at);
        assert!(zeros.iter().all(|&x| x == 0.0));
        give_back(zeros);
        // Too short for the request, or far too long: new memory.
        let (longer, shorter) = (for_output(901), for_output(100));
        assert_ne!(longer.as_ptr(), at);
        assert_ne!(shorter.as_ptr(), at);
        let same = for_output(900);
        assert_eq!(same.as_ptr(), at);
    }

    #[test]
    fn outside_a_recycling_scope_buffers_are_fresh_and_zeroed() {
        let at = {
            let _on = Recycling::set(true);
            let v = for_output(500);
            let at = v.as_ptr();
            give_back(v);
            let _off = Recycling::set(false);
            let z = zeroed(500);
            assert!(z.iter().all(|&x| x == 0.0));
            assert_ne!(z.as_ptr(), at);
            give_back(z);
            at
        };
        // The scopes restored the setting: off, as a thread starts.
        assert!(!RECYCLING.get());
        let fresh = for_output(500);
        assert_ne!(fresh.as_ptr(), at);
        let _on = Recycling::set(true);
        let reused = for_output(500);
        assert_eq!(reused.as_ptr(), at);
        give_back(vec![0.0; 500]);
        release();
        assert_eq!(KEPT.with_borrow(|k| (k.count(), k.by_len.len())), (0, 0));
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_buffers() {
        std::thread::spawn(|| {
            let _on = Recycling::set(true);
            for _ in 0..KEPT_BUFFERS + 10 {
                give_back(vec![1.0; 4]);
            }
            assert_eq!(KEPT.with_borrow(Kept::count), KEPT_BUFFERS);
            let taken: Vec<_> = (0..KEPT_BUFFERS + 1).map(|_| for_output(4)).collect();
            assert_eq!(KEPT.with_borrow(|k| (k.count(), k.by_len.len())), (0, 0));
            assert_eq!(taken.len(), KEPT_BUFFERS + 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_end_of_a_run_frees_what_every_thread_of_the_pool_kept() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let kept = || pool.broadcast(|_| KEPT.with_borrow(Kept::count));
        pool.broadcast(|_| {
            let _on = Recycling::set(true);
            give_back(vec![1.0; 64]);
        });
        assert_eq!(kept(), [1, 1]);
        pool.install(super::super::release_spare_buffers);
        assert_eq!(kept(), [0, 0]);
    }

    #[test]
    fn debug_builds_poison_what_a_reused_buffer_held() {
        let _on = Recycling::set(true);
        let mut v = for_output(16);
        v.fill(1.0);
        give_back(v);
        let again = for_output(16);
        if cfg!(debug_assertions) {
            assert!(again.iter().all(|x| x.is_nan()));
        }
    }
}
