//! The deterministic distributed sampler: which samples each rank trains on
//! at each global step.
//!
//! Owns: epoch orders, global batches, ranks' shares, micro-batches, and the
//! stable identity of each sample draw ([`SampleRef`]). Not here: the
//! samples themselves ([`super::TokenizedDataset`]) or batches.
//!
//! # The rule
//!
//! * The order of epoch `e` is a permutation of `0..n` seeded by
//!   `(seed, e)` ([`epoch_order`]).
//! * The epochs' orders are concatenated; global step `s` consumes the `G`
//!   samples at positions `[s·G, (s+1)·G)` of it, where `G` is the global
//!   batch size. Steps never straddle epochs: the last `n mod G` samples of
//!   each epoch's order are dropped (they change from epoch to epoch), so
//!   `steps_per_epoch = floor(n / G)` and step `s` is in epoch
//!   `s / steps_per_epoch`.
//! * Rank `r` of `N` takes the global batch's positions `r, r+N, r+2N, ...`
//!   and splits its share, in that order, into micro-batches.
//!
//! The trajectory therefore depends on `G` and the seed, never on `N`, and
//! resuming needs only the step. When `N` does not divide `G` the shares
//! differ in size by at most one; the union is still the global batch.
//!
//! # The PRNG, pinned
//!
//! The permutation must not change with a dependency upgrade (resumed and
//! reproduced runs rely on it), so nothing here uses `rand`'s unspecified
//! `StdRng` or `shuffle`. The generator is ChaCha8 (`rand_chacha`'s
//! `ChaCha8Rng`, a fixed, portable algorithm) keyed with 32 bytes:
//! `seed` as u64 little-endian, then `epoch` as u64 little-endian, then the
//! 16-byte domain tag (`b"lorafleet:epoch\0"` for epoch orders,
//! `b"lorafleet:val\0\0\0"` with stream 0 for the held-out split). The
//! permutation is a Fisher–Yates shuffle: for `i` from `n-1` down to `1`,
//! swap `i` with `j` uniform in `0..=i`, drawn as `x % (i+1)` from the first
//! `x = next_u64()` with `x >= 2^64 mod (i+1)` (rejection, so unbiased).
//! A test pins the first values.

use std::sync::{Arc, Mutex};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::DataError;

/// Domain tag of epoch orders in the ChaCha8 key.
pub const EPOCH_TAG: [u8; 16] = *b"lorafleet:epoch\0";
/// Domain tag of the held-out validation split in the ChaCha8 key.
pub const HELD_OUT_TAG: [u8; 16] = *b"lorafleet:val\0\0\0";

/// A permutation of `0..n` drawn from ChaCha8 keyed by `(seed, stream, tag)`
/// (see the module doc).
pub fn seeded_permutation(n: usize, seed: u64, stream: u64, tag: [u8; 16]) -> Vec<usize> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..].copy_from_slice(&tag);
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let bound = i as u64 + 1;
        let threshold = bound.wrapping_neg() % bound; // 2^64 mod bound
        let j = loop {
            let x = rng.next_u64();
            if x >= threshold {
                break (x % bound) as usize;
            }
        };
        order.swap(i, j);
    }
    order
}

/// The order of epoch `epoch`: a permutation of `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    seeded_permutation(n, seed, epoch, EPOCH_TAG)
}

/// One draw of a sample: which sample, in which epoch, at which position of
/// that epoch's order. `(epoch, index)` is unique over a run (each sample is
/// drawn once per epoch), the same whatever the number of ranks: it is the
/// identity dropout masks are seeded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRef {
    pub epoch: u64,
    /// Index into the dataset (a packed row's index when packing).
    pub index: usize,
    /// Position in the epoch's order.
    pub position: usize,
}

impl SampleRef {
    /// A seed for this draw's dropout masks, derived from the run's seed and
    /// `(epoch, index)` with SplitMix64 finalizers.
    pub fn dropout_seed(&self, seed: u64) -> u64 {
        let a = splitmix64(seed ^ 0x6c6f_7261_666c_6565); // "lorafleet"
        let b = splitmix64(a ^ self.epoch);
        splitmix64(b ^ self.index as u64)
    }
}

/// SplitMix64's output function applied to `x + golden gamma`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which samples each rank trains on at each global step (see the module doc).
#[derive(Debug)]
pub struct Sampler {
    num_samples: usize,
    global_batch_size: usize,
    seed: u64,
    /// The last epoch order computed, kept since consecutive steps share it.
    cache: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
}

impl Sampler {
    /// A sampler over `num_samples` samples (rows, when packing), `G =
    /// global_batch_size` per step. Needs `0 < G <= num_samples`.
    pub fn new(
        num_samples: usize,
        global_batch_size: usize,
        seed: u64,
    ) -> Result<Sampler, DataError> {
        if global_batch_size == 0 {
            return Err(DataError::Config {
                key: "global_batch_size",
                message: "must be at least 1, got 0".into(),
            });
        }
        if global_batch_size > num_samples {
            return Err(DataError::BatchLargerThanDataset {
                global_batch_size,
                samples: num_samples,
            });
        }
        Ok(Sampler {
            num_samples,
            global_batch_size,
            seed,
            cache: Mutex::new(None),
        })
    }

    pub fn num_samples(&self) -> usize {
        self.num_samples
    }

    pub fn global_batch_size(&self) -> usize {
        self.global_batch_size
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `floor(n / G)`: the last partial batch of each epoch is dropped.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.num_samples / self.global_batch_size) as u64
    }

    /// The epoch global step `step` (0-based) belongs to.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch()
    }

    /// The order of `epoch` (cached: consecutive steps share it).
    pub fn epoch_order(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, order)) = cache.as_ref()
            && *e == epoch
        {
            return order.clone();
        }
        let order = Arc::new(epoch_order(self.num_samples, self.seed, epoch));
        *cache = Some((epoch, order.clone()));
        order
    }

    /// The draws of global step `step`, in global-batch order.
    pub fn global_batch_refs(&self, step: u64) -> Vec<SampleRef> {
        let epoch = self.epoch_of(step);
        let order = self.epoch_order(epoch);
        let first = (step % self.steps_per_epoch()) as usize * self.global_batch_size;
        (first..first + self.global_batch_size)
            .map(|position| SampleRef {
                epoch,
                index: order[position],
                position,
            })
            .collect()
    }

    /// The sample indices of global step `step` (their epoch is
    /// [`epoch_of`](Self::epoch_of)`(step)`).
    pub fn global_batch(&self, step: u64) -> Vec<usize> {
        self.global_batch_refs(step)
            .into_iter()
            .map(|r| r.index)
            .collect()
    }

    /// Rank `rank` of `world`'s draws at `step`: global-batch positions
    /// `rank, rank + world, ...`.
    pub fn rank_share_refs(&self, step: u64, rank: usize, world: usize) -> Vec<SampleRef> {
        assert!(rank < world, "rank {rank} is not below world size {world}");
        self.global_batch_refs(step)
            .into_iter()
            .skip(rank)
            .step_by(world)
            .collect()
    }

    /// The sample indices of rank `rank` of `world` at `step`.
    pub fn rank_share(&self, step: u64, rank: usize, world: usize) -> Vec<usize> {
        self.rank_share_refs(step, rank, world)
            .into_iter()
            .map(|r| r.index)
            .collect()
    }

    /// Rank `rank`'s share at `step` cut, in order, into micro-batches of
    /// `micro_batch_size` (the last one shorter when it does not divide).
    pub fn micro_batches(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        micro_batch_size: usize,
    ) -> Vec<Vec<SampleRef>> {
        assert!(micro_batch_size > 0, "micro_batch_size must be at least 1");
        self.rank_share_refs(step, rank, world)
            .chunks(micro_batch_size)
            .map(<[SampleRef]>::to_vec)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_pinned() {
        // Changing these values changes every run's data order: don't.
        assert_eq!(epoch_order(10, 42, 0), PINNED_42_0);
        assert_eq!(epoch_order(0, 1, 0), Vec::<usize>::new());
        assert_eq!(epoch_order(1, 1, 0), [0]);
    }

    const PINNED_42_0: [usize; 10] = [3, 6, 5, 4, 7, 8, 1, 0, 9, 2];

    #[test]
    fn steps_never_straddle_epochs() {
        let s = Sampler::new(10, 4, 7).unwrap();
        assert_eq!(s.steps_per_epoch(), 2);
        assert_eq!(s.epoch_of(1), 0);
        assert_eq!(s.epoch_of(2), 1);
        let order = epoch_order(10, 7, 1);
        assert_eq!(s.global_batch(2), order[..4]);
        assert_eq!(s.global_batch(3), order[4..8]);
        let refs = s.global_batch_refs(3);
        assert_eq!((refs[0].epoch, refs[0].position), (1, 4));
    }

    #[test]
    fn micro_batches_cut_the_share_in_order() {
        let s = Sampler::new(16, 8, 1).unwrap();
        let share = s.rank_share_refs(0, 1, 2);
        let micro = s.micro_batches(0, 1, 2, 2);
        assert_eq!(micro.concat(), share);
        assert_eq!(micro.len(), 2);
    }

    #[test]
    fn dropout_seeds_differ_per_draw() {
        let a = SampleRef {
            epoch: 0,
            index: 3,
            position: 0,
        };
        let b = SampleRef {
            epoch: 1,
            index: 3,
            position: 0,
        };
        assert_ne!(a.dropout_seed(1), b.dropout_seed(1));
        assert_ne!(a.dropout_seed(1), a.dropout_seed(2));
    }
}
