//! Parity of LoRA with Hugging Face PEFT.
//!
//! `tests/fixtures/lora/<variant>/` was written by transformers + peft
//! (`tests/fixtures/gen_lora_fixtures.py`): a base model, an adapter PEFT
//! saved (non-zero A and B), and `expected.safetensors` with PEFT's logits,
//! loss and LoRA gradients on a batch with masked prompt tokens. We load the
//! adapter PEFT wrote, and must reproduce all of them; what we save must be
//! PEFT's file again; merging must give PEFT's merged weights.

mod common;

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{Reference, fixture, max_abs_diff};
use trainer::data::{Batch, SampleRef};
use trainer::lora::{self, LoraWeights, merge_into, peft};
use trainer::model::{ModelSource, hf};
use trainer::train::grad::lora_gradients;

struct Case {
    model: trainer::model::Llama,
    adapter: LoraWeights,
    expected: Reference,
    device: Device,
}

fn open(variant: &str, autodiff: bool) -> Case {
    let dir = fixture(&format!("lora/{variant}"));
    let device = if autodiff {
        Device::flex().autodiff()
    } else {
        Device::flex()
    };
    let (model, _) = ModelSource::open(&dir.join("base"))
        .unwrap()
        .into_model(&device)
        .unwrap();
    let adapter = peft::load(&dir.join("adapter"), &model.config).unwrap();
    Case {
        model,
        adapter,
        expected: Reference::open(&dir.join("expected.safetensors")),
        device,
    }
}

fn logits_match(variant: &str) {
    let mut case = open(variant, false);
    lora::attach(&mut case.model, &case.adapter, &case.device, false);
    let (shape, ids) = case.expected.ids("input_ids");
    let input =
        Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &case.device);
    let logits: Vec<f32> = case
        .model
        .forward(input)
        .into_data()
        .try_into_vec()
        .unwrap();
    let diff = max_abs_diff(&logits, &case.expected.get("logits").1);
    eprintln!("{variant}: max abs logit difference {diff:e}");
    assert!(
        diff <= 1e-4,
        "{variant}: logits differ from PEFT by {diff:e}"
    );
}

fn gradients_match(variant: &str) {
    let mut case = open(variant, true);
    let (shape, ids) = case.expected.ids("input_ids");
    let (_, labels) = case.expected.ids("labels");
    let (rows, seq_len) = (shape[0], shape[1]);
    let batch = Batch {
        target_mask: labels
            .iter()
            .map(|&l| if l == -100 { 0.0 } else { 1.0 })
            .collect(),
        input_ids: ids,
        rows,
        seq_len,
        lengths: vec![seq_len; rows],
        sample_ids: (0..rows)
            .map(|i| SampleRef {
                epoch: 0,
                index: i,
                position: i,
            })
            .collect(),
    };
    let targets = batch.num_targets() as f64;
    let step = lora_gradients(
        &mut case.model,
        &case.adapter,
        &[batch],
        targets,
        0,
        &case.device,
    );

    let loss = step.loss_sum / targets;
    let want_loss = case.expected.get("loss").1[0];
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{variant}: loss {loss} vs PEFT {want_loss}"
    );

    // Split the flat gradient back into named tensors, PEFT layout.
    let mut grads = case.adapter.clone();
    grads.set_flat(&step.grads);
    let mut checked = 0;
    for (site, pair) in &grads.pairs {
        for (matrix, got) in [("A", &pair.a), ("B", &pair.b)] {
            let name = format!("grad.{}", peft::peft_key(site, matrix));
            let (want_shape, want) = case.expected.get(&name);
            assert_eq!(got.shape, want_shape, "{name}");
            let scale = want.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
            let rel = max_abs_diff(&got.data, &want) / scale.max(1e-12);
            assert!(
                rel <= 1e-4,
                "{variant}: {name}: relative difference {rel:e}"
            );
            checked += 1;
        }
    }
    let expected_grads = case
        .expected
        .names()
        .iter()
        .filter(|n| n.starts_with("grad."))
        .count();
    assert_eq!(checked, expected_grads, "every PEFT gradient was compared");
}

#[test]
fn all_seven_modules_with_rslora_give_peft_logits() {
    logits_match("all7_rslora");
}

#[test]
fn q_and_v_adapters_give_peft_logits() {
    logits_match("qv_default");
}

#[test]
fn all_seven_modules_with_rslora_give_peft_loss_and_gradients() {
    gradients_match("all7_rslora");
}

#[test]
fn q_and_v_adapters_give_peft_loss_and_gradients() {
    gradients_match("qv_default");
}

#[test]
fn saving_reproduces_the_file_peft_wrote() {
    let dir = fixture("lora/all7_rslora");
    let config = hf::read_config(&dir.join("base")).unwrap();
    let adapter = peft::load(&dir.join("adapter"), &config).unwrap();
    let out = tempfile::tempdir().unwrap();
    peft::save(out.path(), &adapter, "base").unwrap();

    let ours = hf::read_safetensors_file(&out.path().join("adapter_model.safetensors")).unwrap();
    let theirs = hf::read_safetensors_file(&dir.join("adapter/adapter_model.safetensors")).unwrap();
    let names = |w: &trainer::model::WeightMap| w.names().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs), "same keys");
    for name in names(&theirs) {
        assert_eq!(ours.get(&name), theirs.get(&name), "{name}");
    }
    // The settings PEFT needs to rebuild the adapter are the same.
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("adapter_config.json")).unwrap()).unwrap()
    };
    let (ours, theirs) = (read(out.path()), read(&dir.join("adapter")));
    for key in [
        "peft_type",
        "r",
        "lora_alpha",
        "use_rslora",
        "use_dora",
        "bias",
        "task_type",
    ] {
        assert_eq!(ours[key], theirs[key], "adapter_config.json: {key}");
    }
    let sorted = |v: &serde_json::Value| {
        let mut t: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        sorted(&ours["target_modules"]),
        sorted(&theirs["target_modules"])
    );
}

#[test]
fn merging_matches_peft_merge_and_unload() {
    let dir = fixture("lora/all7_rslora");
    let mut base = ModelSource::open(&dir.join("base")).unwrap();
    let adapter = peft::load(&dir.join("adapter"), &base.config).unwrap();
    merge_into(&mut base.weights, &adapter).unwrap();
    let merged = hf::read_weights(&dir.join("merged")).unwrap();
    for name in merged.names() {
        let want = merged.get(name).unwrap();
        let got = base
            .weights
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let want64: Vec<f64> = want.data.iter().map(|&x| x as f64).collect();
        let diff = max_abs_diff(&got.data, &want64);
        assert!(diff <= 1e-6, "{name}: merged weights differ by {diff:e}");
    }
}
