//! Parity with Hugging Face transformers.
//!
//! The fixtures under `tests/fixtures/llama/` were written by transformers'
//! own `LlamaForCausalLM` (see `tests/fixtures/gen_llama_fixtures.py`): each
//! holds a model and `expected.safetensors` with the logits of a batch and 32
//! greedy tokens. Our forward pass must match the logits within 1e-4 and
//! produce the same tokens.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use trainer::generate::{GenerateOptions, generate};
use trainer::model::ModelSource;

mod common;

use common::{Reference, fixture, max_abs_diff};

const LOGIT_TOLERANCE: f32 = 1e-4;

/// Loads `model_path`, compares logits and greedy ids with the fixture in `dir`.
fn check(dir: &Path, model_path: &Path) {
    let device = Device::flex();
    let (model, _) = ModelSource::open(model_path)
        .unwrap()
        .into_model(&device)
        .unwrap();

    let expected = Reference::open(&dir.join("expected.safetensors"));
    let (shape, ids) = expected.ids("input_ids");
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let logits: Vec<f32> = model.forward(input).into_data().try_into_vec().unwrap();
    let (_, want) = expected.get("logits");
    let max_diff = max_abs_diff(&logits, &want);
    eprintln!("{}: max abs logit difference {max_diff:e}", dir.display());
    assert!(
        max_diff <= LOGIT_TOLERANCE as f64,
        "{}: max |logit difference| {max_diff:e} exceeds {LOGIT_TOLERANCE:e}",
        dir.display()
    );

    let prompt: Vec<u32> = expected
        .ids("prompt_ids")
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want_ids: Vec<u32> = expected
        .ids("greedy_ids")
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let options = GenerateOptions {
        max_new_tokens: want_ids.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let got = generate(&model, &prompt, &options, &device, |_| {}).unwrap();
    assert_eq!(got, want_ids, "{}: greedy ids differ", dir.display());
}

fn check_folder(variant: &str) {
    let dir = fixture(&format!("llama/{variant}"));
    check(&dir, &dir);
}

#[test]
fn mha_with_untied_embeddings_matches_transformers() {
    check_folder("mha_untied");
}

#[test]
fn gqa_with_tied_embeddings_and_custom_rope_theta_matches_transformers() {
    check_folder("gqa_tied");
}

#[test]
fn llama3_rope_scaling_from_a_sharded_checkpoint_matches_transformers() {
    check_folder("llama3_sharded");
}

#[test]
fn llama3_rope_scaling_smooth_band_matches_transformers() {
    check_folder("llama3_smooth");
}

#[test]
fn bf16_checkpoint_matches_transformers() {
    check_folder("bf16");
}

#[test]
fn f16_checkpoint_matches_transformers() {
    check_folder("f16");
}

#[test]
fn quantized_gguf_matches_transformers_on_dequantized_weights() {
    let dir = fixture("llama/gguf_q");
    check(&dir, &dir.join("model.gguf"));
}
