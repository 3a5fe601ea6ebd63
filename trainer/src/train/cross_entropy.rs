//! The language-model head and its cross-entropy, computed in row chunks
//! outside the autodiff graph.
//!
//! The logits of a batch are `rows × vocab` values (131 MB for 1,024
//! positions of a 32,000-token vocabulary), and a graph-built
//! `log_softmax → gather → sum` keeps several tensors of that size alive
//! for its backward pass. Here only the positions that are targets go
//! through the head, a chunk of rows at a time, and each chunk's gradient
//! with respect to the hidden states is computed at once from the
//! closed form `∂loss/∂logits = softmax − one_hot(target)` and pushed
//! through the frozen head (`· Wᵀ`). What leaves is the loss sum and a
//! `[rows, hidden]` gradient; `grad` feeds it back into the graph.
//!
//! [`reference_loss_sum`] is the plain graph version, kept as the reference
//! the chunked one is tested against. Not here: the model (`crate::model`).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::llama::frozen_matmul;

/// At most this many logits are alive per chunk (32 MB of f32).
pub(crate) const CHUNK_LOGITS: usize = 8 << 20;

/// The positions of a batch that are predicted: position `rows[i]` of the
/// flattened `[batch × seq]` hidden states predicts token `targets[i]`, and
/// its cross-entropy counts `weights[i]` times in the loss.
#[derive(Debug, Clone, Default)]
pub struct TargetRows {
    pub rows: Vec<i64>,
    pub targets: Vec<i64>,
    pub weights: Vec<f32>,
}

impl TargetRows {
    /// Position `t` of each row predicts token `t + 1` when that token's
    /// mask is non-zero (HF's shifted `labels`, −100 where the mask is 0).
    pub fn shifted(input_ids: &[i64], target_mask: &[f32], seq_len: usize) -> TargetRows {
        let mut out = TargetRows::default();
        for (row, (ids, mask)) in input_ids
            .chunks(seq_len)
            .zip(target_mask.chunks(seq_len))
            .enumerate()
        {
            for t in 1..ids.len() {
                if mask[t] != 0.0 {
                    out.rows.push((row * seq_len + t - 1) as i64);
                    out.targets.push(ids[t]);
                    out.weights.push(mask[t]);
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What [`head_cross_entropy`] returns.
#[derive(Debug)]
pub struct HeadLoss {
    /// `Σ weight · −log p(target)` over the target rows.
    pub loss_sum: f64,
    /// With a gradient scale `g`: `g · ∂loss_sum/∂hidden`, `[rows, hidden]`
    /// (zero on positions that are not targets).
    pub grad_hidden: Option<Tensor<2>>,
}

/// The cross-entropy of `hidden · head` (`[rows, hidden] · [hidden, vocab]`)
/// at `targets`, and with `grad_scale` its gradient with respect to
/// `hidden`, scaled. Both tensors are used without autodiff.
pub fn head_cross_entropy(
    hidden: Tensor<2>,
    head: Tensor<2>,
    targets: &TargetRows,
    grad_scale: Option<f64>,
) -> HeadLoss {
    let chunk = (CHUNK_LOGITS / head.dims()[1]).max(1);
    chunked(hidden, head, targets, grad_scale, chunk)
}

/// [`head_cross_entropy`] with `chunk` rows through the head at a time.
fn chunked(
    hidden: Tensor<2>,
    head: Tensor<2>,
    targets: &TargetRows,
    grad_scale: Option<f64>,
    chunk: usize,
) -> HeadLoss {
    let hidden = hidden.inner();
    let head = head.inner();
    let [rows, width] = hidden.dims();
    let device = hidden.device();
    let zeros = || Tensor::<2>::zeros([rows, width], &device);
    if targets.is_empty() {
        return HeadLoss {
            loss_sum: 0.0,
            grad_hidden: grad_scale.map(|_| zeros()),
        };
    }
    let int = |v: &[i64], shape: [usize; 2]| {
        Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), shape), &device)
    };
    let index = int(&targets.rows, [1, targets.len()]).reshape([targets.len()]);
    let picked = hidden.select(0, index.clone());
    let head_t = grad_scale.map(|_| head.clone().transpose());
    // Loss sums stay on the device until the end: one read, not one per chunk.
    let mut chunk_losses = Vec::new();

    let mut grads = Vec::new();
    for start in (0..targets.len()).step_by(chunk) {
        let end = (start + chunk).min(targets.len());
        let n = end - start;
        let x = picked.clone().narrow(0, start, n);
        let target = int(&targets.targets[start..end], [n, 1]);
        let weight = Tensor::<2>::from_data(
            TensorData::new(targets.weights[start..end].to_vec(), [n, 1]),
            &device,
        );
        let logits = frozen_matmul(x, head.clone());
        let max = logits.clone().max_dim(1);
        let exp = (logits.clone() - max.clone()).exp();
        let sum = exp.clone().sum_dim(1);
        let logsumexp = sum.clone().log() + max;
        let target_logit = logits.gather(1, target.clone());
        let losses = (logsumexp - target_logit) * weight.clone();
        chunk_losses.push(losses.sum());
        if let (Some(scale), Some(head_t)) = (grad_scale, &head_t) {
            // ∂/∂logits of weight · (logsumexp − logit[target]).
            let row_scale = weight * scale;
            let softmax = exp / sum;
            let grad_logits = softmax.scatter(
                1,
                target,
                Tensor::<2>::ones([n, 1], &device).neg(),
                burn::tensor::IndexingUpdateOp::Add,
            ) * row_scale;
            grads.push(frozen_matmul(grad_logits, head_t.clone()));
        }
    }
    let loss_sum = Tensor::cat(chunk_losses, 0)
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor")
        .into_iter()
        .fold(0.0, |sum, chunk| sum + chunk);
    let grad_hidden = grad_scale.map(|_| {
        zeros().select_assign(
            0,
            index,
            Tensor::cat(grads, 0),
            burn::tensor::IndexingUpdateOp::Add,
        )
    });
    HeadLoss {
        loss_sum,
        grad_hidden,
    }
}

/// The loss sum of [`head_cross_entropy`] as one graph: logits, then
/// `log_softmax`, then the targets' log-probabilities. Differentiable when
/// its inputs are; the reference the chunked version is tested against.
pub fn reference_loss_sum(hidden: Tensor<2>, head: Tensor<2>, targets: &TargetRows) -> Tensor<1> {
    let device = hidden.device();
    let n = targets.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(targets.rows.clone(), [n]), &device);
    let target =
        Tensor::<2, Int>::from_data(TensorData::new(targets.targets.clone(), [n, 1]), &device);
    let weight = Tensor::<2>::from_data(TensorData::new(targets.weights.clone(), [n, 1]), &device);
    let logp = log_softmax(frozen_matmul(hidden.select(0, index), head), 1);
    (logp.gather(1, target) * weight).sum().neg()
}

/// The value of a one-element tensor.
pub fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor")[0]
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(shape: [usize; 2], rng: &mut StdRng, device: &Device) -> Tensor<2> {
        let data = (0..shape[0] * shape[1])
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn chunks_give_the_graph_loss_and_gradient() {
        let device = crate::device::default_device().autodiff();
        let mut rng = StdRng::seed_from_u64(7);
        let (batch, seq, width, vocab) = (3, 9, 16, 50);
        let ids: Vec<i64> = (0..batch * seq)
            .map(|_| rng.random_range(0..vocab as i64))
            .collect();
        // Row 1 has no targets at all; the others mix 0, 1 and a weight of 2.
        let mask: Vec<f32> = (0..batch * seq)
            .map(|i| match (i / seq, i % 5) {
                (1, _) => 0.0,
                (_, 0) => 0.0,
                (_, 3) => 2.0,
                _ => 1.0,
            })
            .collect();
        let targets = TargetRows::shifted(&ids, &mask, seq);
        assert!(!targets.is_empty() && targets.len() < batch * (seq - 1));
        let hidden = random([batch * seq, width], &mut rng, &device);
        let head = random([width, vocab], &mut rng, &device);

        let leaf = hidden.clone().require_grad();
        let want = reference_loss_sum(leaf.clone(), head.clone(), &targets);
        let want_loss = scalar(want.clone());
        let scale = 0.25;
        let grads = (want * scale).backward();
        let want_grad = host(leaf.grad(&grads).unwrap());

        for chunk in [1, 4, 1000] {
            let got = chunked(hidden.clone(), head.clone(), &targets, Some(scale), chunk);
            assert!(
                (got.loss_sum - want_loss).abs() <= 1e-5 * want_loss.abs(),
                "chunk {chunk}: loss {} vs {want_loss}",
                got.loss_sum
            );
            let got_grad = host(got.grad_hidden.unwrap());
            for (i, (g, w)) in got_grad.iter().zip(&want_grad).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6,
                    "chunk {chunk}: gradient {i}: {g} vs {w}"
                );
            }
        }
        let no_grad = head_cross_entropy(hidden, head, &targets, None);
        assert!(no_grad.grad_hidden.is_none());
        assert!((no_grad.loss_sum - want_loss).abs() <= 1e-5 * want_loss.abs());
    }

    #[test]
    fn shifted_targets_follow_hf_labels() {
        // Two rows of 4: the mask marks which next tokens are predicted.
        let ids = [10, 11, 12, 13, 20, 21, 22, 23];
        let mask = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        let t = TargetRows::shifted(&ids, &mask, 4);
        assert_eq!(t.rows, [1, 2, 4, 6]);
        assert_eq!(t.targets, [12, 13, 21, 23]);
        assert_eq!(t.weights, [1.0; 4]);
    }
}
