//! The language-model head and its cross-entropy on host buffers: the
//! fused step's version of `super::super::cross_entropy`, which the tests
//! hold it to.
//!
//! Only target positions go through the head, a chunk of rows at a time
//! of at most `CHUNK_LOGITS` logits (170 rows at SmolLM2's 49,152), so a
//! whole `[tokens × vocab]` block is never held; each chunk's gradient
//! comes from the closed form
//! `∂loss/∂logits = softmax − one_hot(target)`, pushed through the frozen
//! head at once, with the probabilities too small to matter set to zero
//! ([`PROBABILITY_FLOOR`]). Not here: the final norm (`super`).

use super::kernels::{
    MatMut, MatRef, Values, WeightRef, add_assign, exp_shifted, matmul_weight, scale_above,
};
use super::spare;
use crate::train::cross_entropy::{CHUNK_LOGITS, TargetRows};

/// Probabilities below this (2⁻⁶⁴) enter the gradient as zero. A model
/// sure of its predictions gives most of a 49,152-token vocabulary
/// probabilities far below it; scaled into the gradient they become
/// subnormal numbers, and the product through the head ran 4.7× slower on
/// them (SmolLM2-135M's shape, f32). A row's gradient is
/// `k · (softmax − one_hot)`; what the floor drops from it is at most
/// `vocab · 2⁻⁶⁴ · k` in all, under 2⁻⁴⁶ · k for any vocabulary below
/// 2¹⁸, while rounding the target's entry `p · k − k` to f32 alone is
/// already about 2⁻²⁴ · k.
const PROBABILITY_FLOOR: f32 = f32::from_bits((127 - 64) << 23);

/// `Σ weight · −log softmax(hidden · head)[target]` over the target rows of
/// `hidden` (`[tokens, width]`; `head` is `[width, vocab]`, in f32, bf16
/// or f16), and with
/// `grad_scale`, `grad_scale · ∂/∂hidden` (zero on rows that are not targets).
pub fn cross_entropy(
    hidden: &[f32],
    head: Values<'_>,
    width: usize,
    targets: &TargetRows,
    grad_scale: Option<f32>,
) -> (f64, Option<Vec<f32>>) {
    let vocab = head.len() / width;
    let head = WeightRef::new(head, width, vocab);
    let mut d_hidden = grad_scale.map(|_| spare::zeroed(hidden.len()));
    // As few chunks as the bound allows, of even sizes: each chunk packs
    // the whole head for its products, so a last chunk of a few rows
    // would cost nearly as much as a full one.
    let most = (CHUNK_LOGITS / vocab).max(1);
    let chunk = targets
        .len()
        .div_ceil(targets.len().div_ceil(most).max(1))
        .max(1);
    let mut loss_sum = 0.0f64;
    let mut picked = Vec::new();
    let largest_chunk = chunk.min(targets.len());
    let mut logits = spare::for_output(largest_chunk * vocab);
    let mut d_picked = match grad_scale {
        Some(_) => spare::for_output(largest_chunk * width),
        None => Vec::new(),
    };
    for start in (0..targets.len()).step_by(chunk) {
        let end = (start + chunk).min(targets.len());
        let n = end - start;
        picked.clear();
        for &row in &targets.rows[start..end] {
            let row = row as usize;
            picked.extend_from_slice(&hidden[row * width..(row + 1) * width]);
        }
        let logits = &mut logits[..n * vocab];
        matmul_weight(
            MatMut::new(logits, n, vocab),
            MatRef::new(&picked, n, width),
            head,
            1.0,
            false,
        );
        for (i, row) in logits.chunks_exact_mut(vocab).enumerate() {
            let target = targets.targets[start + i] as usize;
            let weight = targets.weights[start + i];
            let target_logit = row[target];
            let (max, sum) = exp_shifted(row);
            let logsumexp = sum.ln() + max;
            loss_sum += (weight * (logsumexp - target_logit)) as f64;
            if let Some(g) = grad_scale {
                let k = weight * g;
                scale_above(row, k / sum, sum * PROBABILITY_FLOOR);
                row[target] -= k;
            }
        }
        let Some(d_hidden) = d_hidden.as_mut() else {
            continue;
        };
        let d_picked = &mut d_picked[..n * width];
        matmul_weight(
            MatMut::new(d_picked, n, width),
            MatRef::new(logits, n, vocab),
            head.t(),
            1.0,
            false,
        );
        for (i, &row) in targets.rows[start..end].iter().enumerate() {
            let row = row as usize;
            add_assign(
                &mut d_hidden[row * width..(row + 1) * width],
                &d_picked[i * width..(i + 1) * width],
            );
        }
    }
    spare::give_back(logits);
    spare::give_back(d_picked);
    (loss_sum, d_hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loss and `∂loss/∂hidden` in f64, straight from the definition.
    fn reference(hidden: &[f32], head: &[f32], width: usize, t: &TargetRows) -> (f64, Vec<f64>) {
        let vocab = head.len() / width;
        let mut loss = 0.0;
        let mut grad = vec![0.0f64; hidden.len()];
        for ((&row, &target), &weight) in t.rows.iter().zip(&t.targets).zip(&t.weights) {
            let h = &hidden[row as usize * width..][..width];
            let logits: Vec<f64> = (0..vocab)
                .map(|v| {
                    (0..width)
                        .map(|i| h[i] as f64 * head[i * vocab + v] as f64)
                        .sum()
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            loss += weight as f64 * (sum.ln() + max - logits[target as usize]);
            for (v, l) in logits.iter().enumerate() {
                let d = (l - max).exp() / sum - f64::from(v == target as usize);
                for i in 0..width {
                    grad[row as usize * width + i] +=
                        weight as f64 * d * head[i * vocab + v] as f64;
                }
            }
        }
        (loss, grad)
    }

    #[test]
    fn a_confident_model_gets_the_gradient_of_every_probability_that_matters() {
        // Logits up to 130 below each row's largest, as a model sure of
        // its next token gives them: each row has probabilities that
        // underflow to zero, probabilities between zero and the floor,
        // and probabilities above it.
        let (width, vocab, tokens) = (16, 600, 6);
        let head: Vec<f32> = (0..width * vocab)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 4.0)
            .collect();
        let hidden: Vec<f32> = (0..tokens * width)
            .map(|i| ((i * 104_729 % 997) as f32 / 997.0 - 0.5) * 12.0)
            .collect();
        let targets = TargetRows {
            rows: vec![0, 1, 2, 3, 5],
            targets: vec![3, 599, 250, 17, 440],
            weights: vec![1.0, 1.0, 0.5, 1.0, 1.0],
        };
        let (want_loss, want_grad) = reference(&hidden, &head, width, &targets);
        let g = 1.0 / 4.5;
        let (loss, grad) = cross_entropy(&hidden, Values::F32(&head), width, &targets, Some(g));
        let grad = grad.expect("asked for");
        assert!(
            (loss - want_loss).abs() <= 1e-4 * want_loss.abs(),
            "loss {loss} against {want_loss}"
        );
        let largest = want_grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&got, &want)) in grad.iter().zip(&want_grad).enumerate() {
            let want = want * g as f64;
            assert!(
                (got as f64 - want).abs() <= 1e-5 * largest * g as f64,
                "d_hidden[{i}] {got} against {want}"
            );
        }
        assert!(
            grad[4 * width..5 * width].iter().all(|&v| v == 0.0),
            "row 4 is not a target"
        );
    }
}
