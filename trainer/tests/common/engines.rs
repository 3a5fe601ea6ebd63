//! What the engine comparisons share: a small model shape, batches with
//! prompts and padding, adapters whose every gradient path carries signal,
//! and the agreement the fused step is held to against the graph.

use burn::tensor::Device;
use trainer::data::{Batch, SampleRef};
use trainer::lora::{LoraConfig, LoraWeights, TargetModule};
use trainer::model::init::random_weights;
use trainer::model::{Llama, LlamaConfig, Preset};
use trainer::train::grad::{Engine, StepGradients, lora_gradients_with};

/// Largest allowed relative difference of two engines' loss sums.
pub const LOSS_TOLERANCE: f64 = 1e-5;
/// Largest allowed `max |got − want| / max |want|` per adapter matrix.
pub const GRAD_TOLERANCE: f32 = 1e-4;

/// hidden 64, 4 query heads sharing 2 KV heads of 16, intermediate 96.
pub fn small_config(layers: usize, vocab: usize) -> LlamaConfig {
    let mut config = Preset::Tiny.config();
    config.hidden_size = 64;
    config.num_hidden_layers = layers;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 16;
    config.intermediate_size = 96;
    config.vocab_size = vocab;
    config
}

/// A [`small_config`] model with random weights drawn from `seed`.
pub fn small_model(layers: usize, vocab: usize, seed: u64, device: &Device) -> Llama {
    let config = small_config(layers, vocab);
    let mut weights = random_weights(&config, seed);
    Llama::from_weights(&config, &mut weights, device).unwrap()
}

/// `ids` as rows of `seq`: row `r` is `lengths[r]` long, then padding (no
/// targets), and its first `prompt` positions are not targets either.
/// Samples are numbered from `first`.
pub fn batch_of(
    ids: Vec<i64>,
    seq: usize,
    lengths: &[usize],
    prompt: usize,
    first: usize,
) -> Batch {
    let rows = lengths.len();
    assert_eq!(ids.len(), rows * seq);
    let target_mask = (0..rows * seq)
        .map(|i| {
            let (r, t) = (i / seq, i % seq);
            if t < prompt || t >= lengths[r] {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Batch {
        input_ids: ids,
        target_mask,
        rows,
        seq_len: seq,
        lengths: lengths.to_vec(),
        sample_ids: (0..rows)
            .map(|i| SampleRef {
                epoch: 0,
                index: first + i,
                position: first + i,
            })
            .collect(),
    }
}

/// A batch of `rows × seq` tokens below 97 with the last `pad` positions of
/// odd rows padding and the first two of every row a prompt.
pub fn padded_batch(rows: usize, seq: usize, pad: usize, first: usize) -> Batch {
    let ids = (0..rows * seq)
        .map(|i| ((i * 31 + first) % 97) as i64)
        .collect();
    let lengths: Vec<usize> = (0..rows)
        .map(|r| if r % 2 == 1 { seq - pad } else { seq })
        .collect();
    batch_of(ids, seq, &lengths, 2, first)
}

/// Adapters on `targets` with non-zero `B`, so that every gradient path
/// carries signal.
pub fn adapters(config: &LlamaConfig, targets: &[TargetModule], dropout: f64) -> LoraWeights {
    let mut lora_config = LoraConfig::new(4, 8.0, targets);
    lora_config.dropout = dropout;
    let mut lora = LoraWeights::init(&lora_config, config, 5);
    for (i, pair) in lora.pairs.values_mut().enumerate() {
        for (j, b) in pair.b.data.iter_mut().enumerate() {
            *b = (((i * 7 + j) % 13) as f32 - 6.0) * 0.01;
        }
    }
    lora
}

/// `engine`'s loss and LoRA gradients of `batches` (seed 3).
pub fn gradients(
    engine: Engine,
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
) -> StepGradients {
    let device = Device::flex().autodiff();
    let targets: usize = batches.iter().map(|b| b.num_targets()).sum();
    lora_gradients_with(engine, model, lora, batches, targets as f64, 3, &device)
}

/// The fused and the graph step's gradients of `batches`.
pub fn both(
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
) -> (StepGradients, StepGradients) {
    (
        gradients(Engine::Fused, model, lora, batches),
        gradients(Engine::Graph, model, lora, batches),
    )
}

/// Asserts `got`'s loss sum is within `tolerance` (relative) of `want`'s.
pub fn assert_losses_close(got: &StepGradients, want: &StepGradients, tolerance: f64, what: &str) {
    assert_eq!(got.targets, want.targets, "{what}: target counts");
    let rel = (got.loss_sum - want.loss_sum).abs() / want.loss_sum.abs();
    assert!(
        rel <= tolerance,
        "{what}: loss sums {} vs {} (relative {rel:e})",
        got.loss_sum,
        want.loss_sum
    );
}

/// Asserts every adapter matrix of `got` is within `tolerance` of the
/// largest value of `want`'s (which must not be all zero); returns the
/// worst ratio seen.
pub fn assert_grads_close(
    got: &StepGradients,
    want: &StepGradients,
    lora: &LoraWeights,
    tolerance: f32,
    what: &str,
) -> f32 {
    let (mut g, mut w) = (lora.clone(), lora.clone());
    g.set_flat(&got.grads);
    w.set_flat(&want.grads);
    let mut worst = 0.0f32;
    for ((site, gp), wp) in g.pairs.iter().zip(w.pairs.values()) {
        for (name, a, b) in [("A", &gp.a.data, &wp.a.data), ("B", &gp.b.data, &wp.b.data)] {
            let largest = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                largest > 0.0,
                "{what}: {}.{name}: the reference gradient is zero",
                site.hf_name()
            );
            let diff = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| super::worse(m, (x - y).abs()));
            worst = worst.max(diff / largest);
            assert!(
                diff <= tolerance * largest,
                "{what}: {}.{name} differs by {diff:e} (largest {largest:e})",
                site.hf_name()
            );
        }
    }
    worst
}

/// The fused step's agreement with the graph: loss sums to
/// [`LOSS_TOLERANCE`], every adapter matrix to [`GRAD_TOLERANCE`].
pub fn assert_close(fused: &StepGradients, graph: &StepGradients, lora: &LoraWeights) {
    assert_losses_close(fused, graph, LOSS_TOLERANCE, "fused vs graph");
    let worst = assert_grads_close(fused, graph, lora, GRAD_TOLERANCE, "fused vs graph");
    eprintln!("worst gradient ratio {worst:e}");
}
