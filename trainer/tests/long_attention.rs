//! The fused CPU step against burn's autodiff graph where the fused step
//! cuts the work into blocks: long sequences (attention's query and key
//! blocks, with an online softmax forward and a backward pass recomputed
//! from the saved log-sum-exp), lengths that are no multiple of a block,
//! and a vocabulary large enough that the head's cross-entropy goes
//! through several chunks of logits.
//!
//! Agreement is measured per adapter matrix (each `A` and `B`):
//! `max |fused − graph| ≤ 1e-4 · max |graph|` over its entries, and the
//! loss sums to a relative `1e-5`. At these shapes float rounding stays
//! well under that; a wrong causal mask (one key too many or too few) or a
//! wrong `D = Σ dO ⊙ O` term in the backward pass breaks it by orders of
//! magnitude.

use burn::tensor::Device;
use trainer::data::{Batch, SampleRef};
use trainer::lora::{LoraConfig, LoraWeights, TargetModule};
use trainer::model::init::random_weights;
use trainer::model::{Llama, Preset};
use trainer::train::grad::{Engine, StepGradients, lora_gradients_with};

/// Largest allowed `max |fused − graph| / max |graph|` per adapter matrix.
const GRAD_TOLERANCE: f32 = 1e-4;
/// Largest allowed relative difference of the loss sums.
const LOSS_TOLERANCE: f64 = 1e-5;

/// hidden 64, 2 layers, 4 query heads sharing 2 KV heads of 16.
fn model(vocab: usize, device: &Device) -> Llama {
    let mut config = Preset::Tiny.config();
    config.hidden_size = 64;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 16;
    config.intermediate_size = 96;
    config.vocab_size = vocab;
    let mut weights = random_weights(&config, 17);
    Llama::from_weights(&config, &mut weights, device).unwrap()
}

/// `rows × seq` tokens below `vocab`; row `r` is `lengths[r]` long, then
/// padding (no targets), and the first two positions are a prompt.
fn batch(seq: usize, lengths: &[usize], vocab: usize) -> Batch {
    let rows = lengths.len();
    let input_ids = (0..rows * seq)
        .map(|i| ((i * 7919 + i / 3) % vocab) as i64)
        .collect();
    let target_mask = (0..rows * seq)
        .map(|i| {
            let (r, t) = (i / seq, i % seq);
            if t < 2 || t >= lengths[r] { 0.0 } else { 1.0 }
        })
        .collect();
    Batch {
        input_ids,
        target_mask,
        rows,
        seq_len: seq,
        lengths: lengths.to_vec(),
        sample_ids: (0..rows)
            .map(|i| SampleRef {
                epoch: 0,
                index: i,
                position: i,
            })
            .collect(),
    }
}

/// Adapters with non-zero `B`, so that every gradient path carries signal.
fn adapters(model: &Llama, targets: &[TargetModule]) -> LoraWeights {
    let config = LoraConfig::new(4, 8.0, targets);
    let mut lora = LoraWeights::init(&config, &model.config, 5);
    for (i, pair) in lora.pairs.values_mut().enumerate() {
        for (j, b) in pair.b.data.iter_mut().enumerate() {
            *b = (((i * 7 + j) % 13) as f32 - 6.0) * 0.01;
        }
    }
    lora
}

/// The fused and the graph step's gradients of `batches`.
fn both(
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
) -> (StepGradients, StepGradients) {
    let device = Device::flex().autodiff();
    let targets: usize = batches.iter().map(|b| b.num_targets()).sum();
    let run = |engine, model: &mut Llama| {
        lora_gradients_with(engine, model, lora, batches, targets as f64, 3, &device)
    };
    (run(Engine::Fused, model), run(Engine::Graph, model))
}

/// Asserts the agreement the module's doc states.
fn assert_close(fused: &StepGradients, graph: &StepGradients, lora: &LoraWeights) {
    assert_eq!(fused.targets, graph.targets);
    let rel = (fused.loss_sum - graph.loss_sum).abs() / graph.loss_sum.abs();
    assert!(
        rel <= LOSS_TOLERANCE,
        "loss sums {} vs {} (relative {rel:e})",
        fused.loss_sum,
        graph.loss_sum
    );
    let (mut f, mut g) = (lora.clone(), lora.clone());
    f.set_flat(&fused.grads);
    g.set_flat(&graph.grads);
    let mut worst = 0.0f32;
    for ((site, fp), gp) in f.pairs.iter().zip(g.pairs.values()) {
        for (name, a, b) in [("A", &fp.a.data, &gp.a.data), ("B", &fp.b.data, &gp.b.data)] {
            let largest = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                largest > 0.0,
                "{}.{name}: the reference gradient is zero",
                site.hf_name()
            );
            let diff = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(diff / largest);
            assert!(
                diff <= GRAD_TOLERANCE * largest,
                "{}.{name}: fused and graph differ by {diff:e} (largest {largest:e})",
                site.hf_name()
            );
        }
    }
    eprintln!("loss relative difference {rel:e}, worst gradient ratio {worst:e}");
}

const ATTENTION: [TargetModule; 4] = [
    TargetModule::QProj,
    TargetModule::KProj,
    TargetModule::VProj,
    TargetModule::OProj,
];

#[test]
fn a_2048_token_sequence_with_grouped_query_attention_matches_the_graph() {
    let mut model = model(97, &Device::flex().autodiff());
    let lora = adapters(&model, &ATTENTION);
    let (fused, graph) = both(&mut model, &lora, &[batch(2048, &[2048], 97)]);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn odd_lengths_with_padding_match_the_graph() {
    let mut model = model(97, &Device::flex().autodiff());
    let lora = adapters(&model, &TargetModule::ALL);
    // 1000 positions: no multiple of a query or key block; the second row
    // ends in padding, the third batch is shorter than one query block.
    let batches = [
        batch(1000, &[1000, 873], 97),
        batch(321, &[321], 97),
        batch(37, &[30, 37], 97),
    ];
    let (fused, graph) = both(&mut model, &lora, &batches);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn a_smollm2_sized_vocabulary_matches_the_graph() {
    let vocab = 49_152;
    let mut model = model(vocab, &Device::flex().autodiff());
    let lora = adapters(&model, &TargetModule::ALL);
    // One row of 254 targets (a row is never cut into shares): more than
    // one chunk of logits holds at this vocabulary.
    let batches = [batch(256, &[256], vocab), batch(64, &[64, 50], vocab)];
    let (fused, graph) = both(&mut model, &lora, &batches);
    assert!(254 * vocab > CHUNK_LOGITS);
    assert_close(&fused, &graph, &lora);
}

/// `CHUNK_LOGITS` of the cross-entropy (crate-private): 8 Mi logits.
const CHUNK_LOGITS: usize = 8 << 20;
