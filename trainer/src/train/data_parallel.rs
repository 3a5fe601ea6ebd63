//! What data parallelism adds to a training step: one fused all-reduce of
//! the gradients (with the loss and token counts riding along), sharded
//! evaluation, and checks that every rank still agrees.
//!
//! Every rank's gradient is already divided by the target count of the
//! whole global batch (`grad`), so the *sum* over ranks is the gradient of
//! one process seeing the whole batch: ranks with more real tokens weigh
//! more, as they should. After the all-reduce every rank holds the same
//! bits and applies the same AdamW step, so weights stay identical; a
//! checksum compared every few steps proves it.
//!
//! Not here: the transport (`collective`), which samples a rank gets
//! (`data::Sampler`).

use crate::collective::{Collective, CollectiveError};

/// Why a run stopped before its last step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    #[error("ranks disagree on {what}: rank(s) {ranks:?} differ from rank 0")]
    Disagreement { what: String, ranks: Vec<usize> },
}

/// Sums `values`, `loss_sum` and `count` over ranks in one all-reduce
/// (`values` may be empty: validation sums only the loss and its targets).
/// `stop` rides along too: it comes back true on every rank if any rank
/// asked to stop, so all of them stop after the same step.
pub fn all_reduce_step(
    collective: &mut dyn Collective,
    values: &mut Vec<f32>,
    loss_sum: &mut f64,
    count: &mut usize,
    stop: &mut bool,
) -> Result<(), CollectiveError> {
    if collective.world() == 1 {
        return Ok(());
    }
    let n = values.len();
    values.extend([*loss_sum as f32, *count as f32, f32::from(u8::from(*stop))]);
    collective.all_reduce_sum(values)?;
    *loss_sum = values[n] as f64;
    *count = values[n + 1].round() as usize;
    *stop = values[n + 2] > 0.0;
    values.truncate(n);
    Ok(())
}

/// Which of `batches` this rank evaluates: every `world`-th.
pub fn eval_share<T>(batches: &[T], rank: usize, world: usize) -> impl Iterator<Item = &T> {
    batches.iter().skip(rank).step_by(world)
}

/// FNV-1a of `bytes`: a cheap fingerprint for [`agree`].
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fingerprint of the bits of `values`: equal weights, equal sums.
pub fn checksum(values: &[f32]) -> u64 {
    fingerprint(bytemuck::cast_slice(values))
}

/// Checks that every rank holds the same `value` (a checksum of something
/// that must agree); the error names `what` and the ranks that differ.
pub fn agree(collective: &mut dyn Collective, value: u64, what: &str) -> Result<(), TrainError> {
    let world = collective.world();
    if world == 1 {
        return Ok(());
    }
    // 16 bits per value: exact in f32.
    let mine: Vec<f32> = (0..4)
        .map(|i| ((value >> (16 * i)) & 0xffff) as f32)
        .collect();
    let mut root = mine.clone();
    collective.broadcast(&mut root, 0)?;
    let mut differs = vec![0.0f32; world];
    differs[collective.rank()] = f32::from(u8::from(root != mine));
    collective.all_reduce_sum(&mut differs)?;
    let ranks: Vec<usize> = (0..world).filter(|&r| differs[r] != 0.0).collect();
    if ranks.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Disagreement {
            what: what.to_string(),
            ranks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;

    #[test]
    fn checksums_see_every_bit() {
        let a = [1.0f32, 2.0, 3.0];
        let mut b = a;
        b[1] = f32::from_bits(b[1].to_bits() ^ 1);
        assert_ne!(checksum(&a), checksum(&b));
        assert_eq!(checksum(&a), checksum(&[1.0, 2.0, 3.0]));
    }

    #[test]
    fn one_rank_changes_nothing() {
        let mut grads = vec![1.0, 2.0];
        let (mut loss, mut tokens, mut stop) = (3.5, 7, true);
        all_reduce_step(&mut Solo, &mut grads, &mut loss, &mut tokens, &mut stop).unwrap();
        assert_eq!((grads, loss, tokens, stop), (vec![1.0, 2.0], 3.5, 7, true));
        agree(&mut Solo, 42, "anything").unwrap();
        let shares: Vec<_> = eval_share(&[0, 1, 2, 3, 4], 1, 2).collect();
        assert_eq!(shares, vec![&1, &3]);
    }
}
