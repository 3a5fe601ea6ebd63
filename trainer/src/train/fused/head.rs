//! The language-model head and its cross-entropy on host buffers: the
//! fused step's version of `super::super::cross_entropy`, which the tests
//! hold it to.
//!
//! Only target positions go through the head, a chunk of rows at a time
//! of at most `CHUNK_LOGITS` logits (170 rows at SmolLM2's 49,152), so a
//! whole `[tokens × vocab]` block is never held; each chunk's gradient
//! comes from the closed form
//! `∂loss/∂logits = softmax − one_hot(target)`, pushed through the frozen
//! head at once. Not here: the final norm (`super`).

use super::kernels::{
    MatMut, MatRef, Values, WeightRef, add_assign, exp_shifted, matmul_weight, scale,
};
use crate::train::cross_entropy::{CHUNK_LOGITS, TargetRows};

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
    let mut d_hidden = grad_scale.map(|_| vec![0.0f32; hidden.len()]);
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
    let mut logits = Vec::new();
    let mut d_picked = Vec::new();
    for start in (0..targets.len()).step_by(chunk) {
        let end = (start + chunk).min(targets.len());
        let n = end - start;
        picked.clear();
        for &row in &targets.rows[start..end] {
            let row = row as usize;
            picked.extend_from_slice(&hidden[row * width..(row + 1) * width]);
        }
        logits.resize(n * vocab, 0.0);
        matmul_weight(
            MatMut::new(&mut logits, n, vocab),
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
                scale(row, k / sum);
                row[target] -= k;
            }
        }
        let Some(d_hidden) = d_hidden.as_mut() else {
            continue;
        };
        d_picked.resize(n * width, 0.0);
        matmul_weight(
            MatMut::new(&mut d_picked, n, width),
            MatRef::new(&logits, n, vocab),
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
    (loss_sum, d_hidden)
}
