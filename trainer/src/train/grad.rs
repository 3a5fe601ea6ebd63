//! The loss and the LoRA gradients of one rank's share of a global batch.
//!
//! Token `t` of a row is a *target* when `target_mask[t] = 1`: it is
//! predicted from the logits at position `t − 1` (HF's `labels` with −100 on
//! masked tokens, shifted inside the loss). The loss of a global batch is the
//! sum of the targets' cross-entropy divided by the number of targets in the
//! whole global batch, so micro-batches (and, later, ranks) add their
//! gradients and get the gradient of one big batch.
//!
//! Two engines compute the same thing ([`Engine`]): the fused CPU step
//! (`super::fused`) when the model's weights are on the CPU backend, and
//! burn's autodiff graph otherwise, here; the graph is the reference the
//! fused step is tested against.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::cross_entropy::{TargetRows, head_cross_entropy};
use crate::data::Batch;
use crate::lora::{self, LoraWeights};
use crate::model::Llama;
use crate::model::llama::DropoutSeeds;

/// Result of [`lora_gradients`].
#[derive(Debug, Clone)]
pub struct StepGradients {
    /// Sum of the target tokens' cross-entropy over the batches.
    pub loss_sum: f64,
    pub targets: usize,
    /// Gradient of `loss_sum / denominator`, laid out as `LoraWeights::to_flat`.
    pub grads: Vec<f32>,
}

/// The batch's token ids as a tensor, and the positions that are targets.
fn inputs(batch: &Batch, device: &Device) -> (Tensor<2, Int>, TargetRows) {
    let shape = [batch.rows, batch.seq_len];
    (
        Tensor::from_data(TensorData::new(batch.input_ids.clone(), shape), device),
        TargetRows::shifted(&batch.input_ids, &batch.target_mask, batch.seq_len),
    )
}

/// The final hidden states of `ids` as `[rows × seq, hidden]`.
fn flat_hidden(model: &Llama, ids: Tensor<2, Int>, dropout: Option<&DropoutSeeds>) -> Tensor<2> {
    let hidden = model.hidden_states(ids, None, dropout);
    let [b, s, h] = hidden.dims();
    hidden.reshape([b * s, h])
}

/// Gradients of `Σ loss_sum(batch) / denominator` with respect to every
/// LoRA value of `lora` on `model` (on an autodiff `device` for the graph
/// engine). Dropout masks (if the adapter has dropout) come from each row's
/// sample identity and `seed`.
///
/// The rows of each batch are cut into shares ([`share_count`]) that run on
/// the CPU pool's threads at once, and the shares' sums are added in share
/// order. (In the graph engine each share gets its own copy of the model:
/// the frozen weights are shared, the adapter is not, so their autodiff
/// graphs stay apart.) This is what fills the other cores, and smaller
/// shares keep their activations in cache. The result is the same sum,
/// rounded in another order; it repeats bit for bit for the same batch
/// shapes and threads.
pub fn lora_gradients(
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
    denominator: f64,
    seed: u64,
    device: &Device,
) -> StepGradients {
    lora_gradients_with(
        Engine::Fused,
        model,
        lora,
        batches,
        denominator,
        seed,
        device,
    )
}

/// How a step's gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The fused CPU step (`super::fused`) when the model's weights are on
    /// the CPU backend; the graph otherwise.
    Fused,
    /// burn's autodiff graph, on any backend: the reference.
    Graph,
}

impl Engine {
    /// `fused` or `graph`, as `bench train --engine` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fused => "fused",
            Engine::Graph => "graph",
        }
    }
}

/// What a step keeps of its forward pass for its backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Every layer's activations: the fastest.
    #[default]
    Kept,
    /// Only each layer's input; each layer's forward pass runs again just
    /// before its backward pass (`training.gradient_checkpointing`). In the
    /// fused step the activations held drop from every layer's to one
    /// layer's plus the layers' inputs, for about a third more arithmetic,
    /// and the gradients are the same bit for bit. The graph engine (GPU
    /// workers) keeps every layer's activations either way.
    Recomputed,
}

/// How a step's gradients are computed: the engine, and what it keeps
/// for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMode {
    pub engine: Engine,
    pub activations: Activations,
}

impl From<Engine> for StepMode {
    fn from(engine: Engine) -> StepMode {
        StepMode {
            engine,
            activations: Activations::Kept,
        }
    }
}

/// [`lora_gradients`] with the engine (and what it keeps) chosen.
pub fn lora_gradients_with(
    mode: impl Into<StepMode>,
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
    denominator: f64,
    seed: u64,
    device: &Device,
) -> StepGradients {
    let StepMode {
        engine,
        activations,
    } = mode.into();
    let threads = crate::device::cpu_threads();
    let shares = |parts: usize| -> Vec<Vec<Batch>> {
        (0..parts)
            .map(|part| {
                batches
                    .iter()
                    .filter_map(|b| b.row_share(part, parts))
                    .collect()
            })
            .collect()
    };
    use rayon::prelude::*;
    #[cfg(feature = "flex")]
    if engine == Engine::Fused
        && let Some(weights) = super::fused::CpuWeights::of(model)
    {
        let model = &*model;
        let run = |share: &[Batch]| {
            super::fused::share_gradients(
                model,
                &weights,
                lora,
                share,
                denominator,
                seed,
                activations,
            )
        };
        let share_tokens = fused_share_tokens(threads, weights.products_on_tiles());
        let parts = share_count(batches, threads, share_tokens);
        if parts <= 1 {
            return run(batches);
        }
        let results: Vec<StepGradients> = shares(parts).par_iter().map(|s| run(s)).collect();
        return add_in_order(results, lora.num_parameters());
    }
    let _ = (engine, activations);
    // An accelerator takes the whole batch at once: shares exist to fill CPU cores.
    if crate::device::is_accelerator(device) {
        return share_gradients(model, lora, batches, denominator, seed, device);
    }
    let parts = share_count(batches, threads, GRAPH_SHARE_TOKENS);
    if parts <= 1 {
        return share_gradients(model, lora, batches, denominator, seed, device);
    }
    let mut copies: Vec<Llama> = (1..parts).map(|_| model.clone()).collect();
    let models: Vec<&mut Llama> = std::iter::once(model).chain(copies.iter_mut()).collect();
    let results: Vec<StepGradients> = models
        .into_par_iter()
        .zip(shares(parts).par_iter())
        .map(|(model, share)| share_gradients(model, lora, share, denominator, seed, device))
        .collect();
    add_in_order(results, lora.num_parameters())
}

/// The shares' sums, added in share order.
fn add_in_order(results: Vec<StepGradients>, parameters: usize) -> StepGradients {
    let mut total = StepGradients {
        loss_sum: 0.0,
        targets: 0,
        grads: vec![0.0; parameters],
    };
    for r in results {
        total.loss_sum += r.loss_sum;
        total.targets += r.targets;
        for (t, g) in total.grads.iter_mut().zip(&r.grads) {
            *t += g;
        }
    }
    total
}

/// About this many tokens go through the model at once: a share's
/// activations then stay in the caches between the element-wise passes.
/// Measured on the reference workloads: in the graph engine, 256 gave
/// 10-15% over whole batches of 1,024 tokens at one thread, and a third of
/// the memory.
const GRAPH_SHARE_TOKENS: usize = 256;

/// The fused engine's share size. Every share packs each weight matrix
/// again for its products, so fewer, larger shares pay less of that; with
/// more threads, shares run side by side and share the caches, so smaller
/// ones win. Measured on the reference workloads (`bench train`): at one
/// thread 512 gave 5-15% over 128 and 256; at two threads 128 gave 15-25%
/// over 256. Products on AMX tiles multiply so fast that packing the
/// weights is a large part of each one, and at two threads 512 gave 3-14%
/// over 128 there.
#[cfg(feature = "flex")]
fn fused_share_tokens(threads: usize, products_on_tiles: bool) -> usize {
    if threads <= 1 || products_on_tiles {
        512
    } else {
        128
    }
}

/// Into how many row shares [`lora_gradients`] cuts each batch: enough for
/// `share_tokens` per share and at least one per thread, at most one per row.
fn share_count(batches: &[Batch], threads: usize, share_tokens: usize) -> usize {
    let widest = batches.iter().map(|b| b.rows).max().unwrap_or(0);
    let tokens = batches
        .iter()
        .map(|b| b.rows * b.seq_len)
        .max()
        .unwrap_or(0);
    tokens.div_ceil(share_tokens).max(threads).min(widest)
}

/// [`lora_gradients`] of `batches` on the calling thread.
fn share_gradients(
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
        let (ids, rows) = inputs(batch, device);
        let seeds = DropoutSeeds {
            seeds: batch
                .sample_ids
                .iter()
                .map(|r| r.dropout_seed(seed))
                .collect(),
        };
        let hidden = flat_hidden(model, ids, use_dropout.then_some(&seeds));
        let head = head_cross_entropy(
            hidden.clone(),
            model.lm_head.val(),
            &rows,
            Some(1.0 / denominator),
        );
        // The head's gradient enters the graph as a constant: the gradient
        // of Σ hidden ⊙ G with respect to `hidden` is G.
        let grad_hidden = head.grad_hidden.expect("asked for").autodiff();
        let g = (hidden * grad_hidden).sum().backward();
        loss_sum += head.loss_sum;
        targets += batch.num_targets();
        // Every adapter gradient, transposed to PEFT's layout and flattened
        // in `to_flat` order, read from the device in one transfer.
        let mut flat = Vec::with_capacity(2 * lora.pairs.len());
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
                let n: usize = grad.dims().iter().product();
                flat.push(grad.transpose().reshape([n]));
            }
        }
        if flat.is_empty() {
            continue;
        }
        let host = Tensor::cat(flat, 0)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 gradients");
        for (acc, x) in grads.iter_mut().zip(&host) {
            *acc += x;
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
    eval_loss_sum_with(Engine::Fused, model, lora, batches, device)
}

/// [`eval_loss_sum`] with the engine chosen.
pub fn eval_loss_sum_with<'a>(
    engine: Engine,
    model: &mut Llama,
    lora: &LoraWeights,
    batches: impl IntoIterator<Item = &'a Batch>,
    device: &Device,
) -> (f64, usize) {
    #[cfg(feature = "flex")]
    if engine == Engine::Fused
        && let Some(weights) = super::fused::CpuWeights::of(model)
    {
        return super::fused::loss_sum(model, &weights, lora, batches);
    }
    let _ = engine;
    lora::attach(model, lora, device, false);
    let mut loss_sum = 0.0;
    let mut targets = 0;
    for batch in batches {
        let (ids, rows) = inputs(batch, device);
        let hidden = flat_hidden(model, ids, None);
        loss_sum += head_cross_entropy(hidden, model.lm_head.val(), &rows, None).loss_sum;
        targets += batch.num_targets();
    }
    (loss_sum, targets)
}
