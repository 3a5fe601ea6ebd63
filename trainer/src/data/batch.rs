//! Padded micro-batches as plain row-major vectors, ready to become tensors.
//!
//! Owns: padding rows to the longest one with the pad id, the `[rows,
//! seq_len]` layout, and counting targets. The mask convention is the
//! [module doc](super)'s (HF labels, shifted inside the loss). Not here:
//! tensors (the trainer builds them from these `Vec`s) or which samples go
//! together ([`super::Sampler`]).

use super::format::TokenizedSample;
use super::sampler::SampleRef;
use crate::tokenizer::TextTokenizer;

/// The id padding positions hold: the tokenizer's BOS, else 0. Padding is
/// never a target and sits after each row's tokens, so under causal
/// attention no real token sees it.
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    tokenizer.bos_id().unwrap_or(0)
}

/// A micro-batch: `rows` samples, right-padded to `seq_len` (the longest).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row-major `[rows, seq_len]`.
    pub input_ids: Vec<i64>,
    /// Row-major `[rows, seq_len]`; `1.0` where the token is a target
    /// (predicted from the position before it), `0.0` elsewhere, padding
    /// and position 0 included.
    pub target_mask: Vec<f32>,
    pub rows: usize,
    pub seq_len: usize,
    /// Each row's length before padding.
    pub lengths: Vec<usize>,
    /// Each row's draw (its dropout identity).
    pub sample_ids: Vec<SampleRef>,
}

impl Batch {
    /// Pads `samples` (drawn as `ids`, one each) to the longest with `pad_id`.
    pub fn new(samples: &[&TokenizedSample], ids: &[SampleRef], pad_id: u32) -> Batch {
        assert_eq!(samples.len(), ids.len(), "one SampleRef per sample");
        let rows = samples.len();
        let seq_len = samples.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut input_ids = vec![pad_id as i64; rows * seq_len];
        let mut target_mask = vec![0.0f32; rows * seq_len];
        for (r, sample) in samples.iter().enumerate() {
            let row = r * seq_len;
            for (t, (&id, &target)) in sample.input_ids.iter().zip(&sample.target_mask).enumerate()
            {
                input_ids[row + t] = id as i64;
                if target && t > 0 {
                    target_mask[row + t] = 1.0;
                }
            }
        }
        Batch {
            input_ids,
            target_mask,
            rows,
            seq_len,
            lengths: samples.iter().map(|s| s.len()).collect(),
            sample_ids: ids.to_vec(),
        }
    }

    /// Target tokens in this micro-batch. The loss divides by the sum of
    /// this over the whole global batch (every micro-batch of every rank).
    pub fn num_targets(&self) -> usize {
        self.target_mask.iter().filter(|&&m| m != 0.0).count()
    }

    /// The same batch as HF labels: `input_ids` with `-100` where the token
    /// is not a target (the loss shifts them: logits at `t - 1` against
    /// label `t`).
    pub fn hf_labels(&self) -> Vec<i64> {
        self.input_ids
            .iter()
            .zip(&self.target_mask)
            .map(|(&id, &m)| if m != 0.0 { id } else { -100 })
            .collect()
    }

    /// Share `part` of `parts`: a contiguous run of rows (`None` when it is
    /// empty), with the same padding.
    pub fn row_share(&self, part: usize, parts: usize) -> Option<Batch> {
        let (start, end) = (part * self.rows / parts, (part + 1) * self.rows / parts);
        if start == end {
            return None;
        }
        let cells = start * self.seq_len..end * self.seq_len;
        Some(Batch {
            input_ids: self.input_ids[cells.clone()].to_vec(),
            target_mask: self.target_mask[cells].to_vec(),
            rows: end - start,
            seq_len: self.seq_len,
            lengths: self.lengths[start..end].to_vec(),
            sample_ids: self.sample_ids[start..end].to_vec(),
        })
    }

    /// Row `r`'s ids, padding included.
    pub fn row(&self, r: usize) -> &[i64] {
        &self.input_ids[r * self.seq_len..(r + 1) * self.seq_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_row() {
        let a = TokenizedSample {
            input_ids: vec![5, 6, 7],
            target_mask: vec![false, false, true],
            segment_starts: vec![0],
        };
        let b = TokenizedSample {
            input_ids: vec![8, 9],
            target_mask: vec![false, true],
            segment_starts: vec![0],
        };
        let ids = [
            SampleRef {
                epoch: 0,
                index: 0,
                position: 0,
            },
            SampleRef {
                epoch: 0,
                index: 1,
                position: 1,
            },
        ];
        let batch = Batch::new(&[&a, &b], &ids, 0);
        assert_eq!((batch.rows, batch.seq_len), (2, 3));
        assert_eq!(batch.input_ids, [5, 6, 7, 8, 9, 0]);
        assert_eq!(batch.target_mask, [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(batch.hf_labels(), [-100, -100, 7, -100, 9, -100]);
        assert_eq!(batch.num_targets(), 2);
        assert_eq!(batch.lengths, [3, 2]);
        assert_eq!(batch.row(1), [8, 9, 0]);
    }
}
