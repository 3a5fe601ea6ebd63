//! [`SampledSteps`]: the batches of each step, drawn from a tokenized dataset
//! by the deterministic [`Sampler`].
//!
//! Rank `r` of `N` takes its share of global step `s` in micro-batches; the
//! loss divisor is the target count of the whole global batch, which every
//! rank computes alone from the same sampler. Validation batches are the
//! validation set in file order.

use super::run::{StepBatches, StepData};
use crate::data::{Batch, SampleRef, Sampler, TokenizedDataset};

/// Batches of a run over `train` (and `validation`), for one rank.
pub struct SampledSteps<'a> {
    pub train: &'a TokenizedDataset,
    pub validation: Option<&'a TokenizedDataset>,
    pub sampler: &'a Sampler,
    pub micro_batch_size: usize,
    pub pad_id: u32,
    pub rank: usize,
    pub world: usize,
}

impl StepData for SampledSteps<'_> {
    fn step_batches(&self, step: usize) -> StepBatches {
        let step = step as u64;
        let micro_batches = self
            .sampler
            .micro_batches(step, self.rank, self.world, self.micro_batch_size)
            .iter()
            .map(|refs| self.train.batch(refs, self.pad_id))
            .collect();
        StepBatches {
            micro_batches,
            global_targets: self.train.targets_in(&self.sampler.global_batch(step)),
            epoch: self.sampler.epoch_of(step) as usize,
        }
    }

    fn eval_batches(&self) -> Vec<Batch> {
        let Some(val) = self.validation else {
            return Vec::new();
        };
        let refs: Vec<SampleRef> = (0..val.len())
            .map(|i| SampleRef {
                epoch: 0,
                index: i,
                position: i,
            })
            .collect();
        refs.chunks(self.micro_batch_size)
            .map(|chunk| val.batch(chunk, self.pad_id))
            .collect()
    }
}
