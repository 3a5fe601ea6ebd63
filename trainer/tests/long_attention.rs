//! The fused CPU step against burn's autodiff graph where the fused step
//! cuts the work into blocks: long sequences (attention's query and key
//! blocks, with an online softmax forward and a backward pass recomputed
//! from the saved log-sum-exp), lengths that are no multiple of a block,
//! and a vocabulary large enough that the head's cross-entropy goes
//! through several chunks of logits.
//!
//! Agreement is measured per adapter matrix (each `A` and `B`):
//! `max |fused − graph| ≤ 1e-4 · max |graph|` over its entries, and the
//! loss sums to a relative `1e-5` (`common::engines::assert_close`). At these shapes float rounding stays
//! well under that; a wrong causal mask (one key too many or too few) or a
//! wrong `D = Σ dO ⊙ O` term in the backward pass breaks it by orders of
//! magnitude.

use burn::tensor::Device;
use trainer::data::Batch;
use trainer::lora::{LoraWeights, TargetModule};
use trainer::model::Llama;

mod common;

use common::engines::{assert_close, batch_of, both, small_model};

/// hidden 64, 2 layers, 4 query heads sharing 2 KV heads of 16.
fn model(vocab: usize, device: &Device) -> Llama {
    small_model(2, vocab, 17, device)
}

/// `rows × seq` tokens below `vocab`; row `r` is `lengths[r]` long, then
/// padding (no targets), and the first two positions are a prompt.
fn batch(seq: usize, lengths: &[usize], vocab: usize) -> Batch {
    let ids = (0..lengths.len() * seq)
        .map(|i| ((i * 7919 + i / 3) % vocab) as i64)
        .collect();
    batch_of(ids, seq, lengths, 2, 0)
}

/// Adapters on `targets` with non-zero `B`, no dropout.
fn adapters(model: &Llama, targets: &[TargetModule]) -> LoraWeights {
    common::engines::adapters(&model.config, targets, 0.0)
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
