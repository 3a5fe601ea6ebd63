//! Parity with Hugging Face transformers.
//!
//! The fixtures under `tests/fixtures/llama/` were written by transformers'
//! own `LlamaForCausalLM` (see `tests/fixtures/gen_llama_fixtures.py`): each
//! holds a model and `expected.safetensors` with the logits of a batch and 32
//! greedy tokens. Our forward pass must match the logits within 1e-4 and
//! produce the same tokens.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use trainer::generate::{GenerateOptions, generate};
use trainer::model::ModelSource;

const LOGIT_TOLERANCE: f32 = 1e-4;

fn fixture(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/llama")
        .join(variant)
}

/// One tensor of `expected.safetensors`: its shape and values as f64.
fn expected(dir: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let values = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("unexpected dtype {other:?} for {name}"),
    };
    (view.shape().to_vec(), values)
}

/// Loads `model_path`, compares logits and greedy ids with the fixture in `dir`.
fn check(dir: &Path, model_path: &Path) {
    let device = Device::flex();
    let (model, _) = ModelSource::open(model_path)
        .unwrap()
        .into_model(&device)
        .unwrap();

    let (shape, ids) = expected(dir, "input_ids");
    let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let logits: Vec<f32> = model.forward(input).into_data().try_into_vec().unwrap();
    let (want_shape, want) = expected(dir, "logits");
    assert_eq!(logits.len(), want.len(), "logits of shape {want_shape:?}");
    let max_diff = logits
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{}: max abs logit difference {max_diff:e}", dir.display());
    assert!(
        max_diff <= LOGIT_TOLERANCE as f64,
        "{}: max |logit difference| {max_diff:e} exceeds {LOGIT_TOLERANCE:e}",
        dir.display()
    );

    let (_, prompt) = expected(dir, "prompt_ids");
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    let (_, want_ids) = expected(dir, "greedy_ids");
    let want_ids: Vec<u32> = want_ids.iter().map(|&x| x as u32).collect();
    let options = GenerateOptions {
        max_new_tokens: want_ids.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let got = generate(&model, &prompt, &options, &device, |_| {}).unwrap();
    assert_eq!(got, want_ids, "{}: greedy ids differ", dir.display());
}

fn check_folder(variant: &str) {
    let dir = fixture(variant);
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
    let dir = fixture("gguf_q");
    check(&dir, &dir.join("model.gguf"));
}
