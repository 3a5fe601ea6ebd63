//! A real model: SmolLM2-135M-Instruct from its llama.cpp GGUF (Q4_1).
//!
//! `examples/smollm2/fetch.sh` puts the file in `examples/smollm2/cache/`
//! (`scripts/test` runs it). The expectations in
//! `tests/fixtures/smollm2/expected.json` come from transformers loading the
//! same GGUF (`tests/fixtures/gen_smollm2_fixture.py`). Without the file the
//! tests fail, unless `LORAFLEET_SKIP_SMOLLM2=1` skips them explicitly.

use std::path::{Path, PathBuf};

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::lorafleet;
use trainer::model::{KvCache, ModelSource};

fn model_path() -> Option<PathBuf> {
    if std::env::var("LORAFLEET_SKIP_SMOLLM2").as_deref() == Ok("1") {
        eprintln!("skipped: LORAFLEET_SKIP_SMOLLM2=1");
        return None;
    }
    let path = std::env::var_os("LORAFLEET_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/smollm2/cache/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run examples/smollm2/fetch.sh (or set LORAFLEET_SKIP_SMOLLM2=1 to skip)",
        path.display()
    );
    Some(path)
}

fn expected() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/expected.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn answers_the_capital_of_france_like_transformers() {
    let Some(model) = model_path() else { return };
    let want = expected();
    let out = lorafleet(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--chat",
        "What is the capital of France?",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        got["text"].as_str().unwrap().contains("Paris"),
        "answer: {}",
        got["text"]
    );
    // The chat template and tokenizer give transformers' ids, and greedy
    // decoding picks the same tokens (EOS included).
    assert_eq!(ids(&got["prompt_ids"]), ids(&want["chat_ids"]));
    assert_eq!(ids(&got["output_ids"]), ids(&want["greedy_new_ids"]));
    assert_eq!(got["text"], want["greedy_text"]);
}

#[test]
fn last_position_logits_match_transformers() {
    let Some(path) = model_path() else { return };
    let want = expected();
    let device = Device::flex();
    let (model, tokenizer) = ModelSource::open(&path)
        .unwrap()
        .into_model(&device)
        .unwrap();
    let tokenizer = tokenizer.expect("the GGUF carries a tokenizer");
    let plain = tokenizer
        .encode_prompt(want["plain_text"].as_str().unwrap())
        .unwrap();
    assert_eq!(plain, ids(&want["plain_ids"]));

    let chat = ids(&want["chat_ids"]);
    let input = Tensor::<2, Int>::from_data(
        TensorData::new(chat.iter().map(|&t| t as i64).collect(), [1, chat.len()]),
        &device,
    );
    let mut cache = KvCache::new(model.layers.len());
    let logits: Vec<f32> = model
        .forward_last(input, &mut cache)
        .into_data()
        .try_into_vec()
        .unwrap();
    let reference: Vec<f64> = want["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(logits.len(), reference.len());
    let max_diff = logits
        .iter()
        .zip(&reference)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("smollm2 last-position logits: max abs difference {max_diff:e}");
    // The reference is rounded to 5 decimals, and 30 layers of f32 arithmetic
    // in another order add a little more (7e-5 measured).
    assert!(max_diff < 2e-4, "max |logit difference| {max_diff:e}");
}

#[test]
fn chat_fine_tune_spec_and_its_data_validate() {
    let Some(_) = model_path() else { return };
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/smollm2-chat.yaml");
    let out = lorafleet(&["validate", spec.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["train"]["shape"], "chat");
    assert!(v["train"]["samples"].as_u64().unwrap() > 1000);
    assert!(v["train"]["target_tokens"].as_u64().unwrap() > 0);
}
