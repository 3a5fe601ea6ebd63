//! The loss and the LoRA gradients of one rank's share of a global batch.
//!
//! Token `t` of a row is a *target* when `target_mask[t] = 1`: it is
//! predicted from the logits at position `t − 1` (HF's `labels` with −100 on
//! masked tokens, shifted inside the loss). The loss of a global batch is the
//! sum of the targets' cross-entropy divided by the number of targets in the
//! whole global batch, so micro-batches (and, later, ranks) add their
//! gradients and get the gradient of one big batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::Batch;
use crate::lora::{self, LoraWeights};
use crate::model::Llama;
use crate::model::llama::{DropoutSeeds, transpose};

/// Sum over target tokens of `−log p(token | previous positions)`:
/// logits `[b, s, vocab]`, ids and mask `[b, s]` → `[1]`.
pub fn target_loss_sum(
    logits: Tensor<3>,
    input_ids: Tensor<2, Int>,
    target_mask: Tensor<2>,
) -> Tensor<1> {
    let [b, s, _] = logits.dims();
    let logp = log_softmax(logits.narrow(1, 0, s - 1), 2);
    let next = input_ids.narrow(1, 1, s - 1).reshape([b, s - 1, 1]);
    let picked = logp.gather(2, next).reshape([b, s - 1]);
    (picked * target_mask.narrow(1, 1, s - 1)).sum().neg()
}

/// Result of [`lora_gradients`].
#[derive(Debug, Clone)]
pub struct StepGradients {
    /// Sum of the target tokens' cross-entropy over the batches.
    pub loss_sum: f64,
    pub targets: usize,
    /// Gradient of `loss_sum / denominator`, laid out as `LoraWeights::to_flat`.
    pub grads: Vec<f32>,
}

/// The value of a one-element tensor.
fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor")[0]
}

fn tensors(batch: &Batch, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let shape = [batch.rows, batch.seq_len];
    (
        Tensor::from_data(TensorData::new(batch.input_ids.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.target_mask.clone(), shape), device),
    )
}

/// Gradients of `Σ loss_sum(batch) / denominator` with respect to every
/// LoRA value, with `lora` attached to `model` (on an autodiff `device`).
/// Dropout masks (if the adapter has dropout) come from each row's sample
/// identity and `seed`.
pub fn lora_gradients(
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
    denominator: f64,
    seed: u64,
    device: &Device,
) -> StepGradients {
    lora::attach(model, lora, device, true);
    let mut grads = vec![0.0f32; lora.num_parameters()];
    let mut loss_sum = 0.0;
    let mut targets = 0;
    let use_dropout = lora.config.dropout > 0.0;
    for batch in batches {
        let (ids, mask) = tensors(batch, device);
        let seeds = DropoutSeeds {
            seeds: batch
                .sample_ids
                .iter()
                .map(|r| r.dropout_seed(seed))
                .collect(),
        };
        let logits = model.forward_train(ids.clone(), use_dropout.then_some(&seeds));
        let sum = target_loss_sum(logits, ids, mask);
        let g = (sum.clone() / denominator).backward();
        loss_sum += scalar(sum);
        targets += batch.num_targets();
        let mut at = 0;
        for site in lora.pairs.keys() {
            let adapter = lora::projection(model, *site)
                .lora
                .as_ref()
                .expect("attached above");
            for param in [&adapter.a, &adapter.b] {
                let grad = param
                    .val()
                    .grad(&g)
                    .expect("LoRA parameters receive gradients");
                let host = transpose(&lora::host(grad));
                for (acc, x) in grads[at..at + host.data.len()].iter_mut().zip(&host.data) {
                    *acc += x;
                }
                at += host.data.len();
            }
        }
    }
    StepGradients {
        loss_sum,
        targets,
        grads,
    }
}

/// Sum of target cross-entropy and target count over `batches`, without
/// gradients and without dropout (evaluation).
pub fn eval_loss_sum<'a>(
    model: &mut Llama,
    lora: &LoraWeights,
    batches: impl IntoIterator<Item = &'a Batch>,
    device: &Device,
) -> (f64, usize) {
    lora::attach(model, lora, device, false);
    let mut loss_sum = 0.0;
    let mut targets = 0;
    for batch in batches {
        let (ids, mask) = tensors(batch, device);
        let logits = model.forward_train(ids.clone(), None);
        loss_sum += scalar(target_loss_sum(logits, ids, mask));
        targets += batch.num_targets();
    }
    (loss_sum, targets)
}
