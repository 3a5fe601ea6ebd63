//! The model commands of the `lorafleet` binary, run as a user runs them:
//! `init-model`, `generate` (its JSON contract and its errors on bad input),
//! and `bench forward`.

use std::path::Path;
use std::process::Output;

mod common;

use common::lorafleet;

fn init_tiny(dir: &Path, seed: &str) {
    let out = lorafleet(&[
        "init-model",
        "--preset",
        "tiny",
        "--seed",
        seed,
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `generate` and returns its parsed `--json` object.
fn generate_json(model: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = lorafleet(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Rewrites the `config.json` of the model folder `dir` with `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

/// Runs `generate --model MODEL --prompt-ids IDS`.
fn generate_ids(model: &Path, ids: &str) -> Output {
    lorafleet(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        ids,
    ])
}

/// Asserts a failed run with exit code 2 and a single `lorafleet: ...` line
/// on stderr that contains every one of `needles`; no panic.
fn assert_clear_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("lorafleet: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn init_model_is_deterministic_per_seed_and_loads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    init_tiny(&a, "7");
    init_tiny(&b, "7");
    init_tiny(&c, "8");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(a.join(f).exists(), "{f} written");
    }
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b), "same seed, same weights");
    assert_ne!(weights(&a), weights(&c), "another seed, other weights");

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_size"], 256);
    assert_eq!(config["num_hidden_layers"], 4);
    assert_eq!(config["intermediate_size"], 688);
    assert_eq!(config["vocab_size"], 1024);
}

#[test]
fn generate_json_has_the_documented_keys_and_is_greedy_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    init_tiny(tmp.path(), "1");
    let args = [
        "--prompt-ids",
        "5,6,7",
        "--max-new-tokens",
        "6",
        "--ignore-eos",
    ];
    let first = generate_json(tmp.path(), &args);
    assert_eq!(first["prompt_ids"], serde_json::json!([5, 6, 7]));
    assert_eq!(first["output_ids"].as_array().unwrap().len(), 6);
    assert!(first["text"].is_string());
    // Greedy decoding is deterministic.
    assert_eq!(generate_json(tmp.path(), &args), first);

    // A text prompt is tokenized (the built-in tokenizer maps bytes to ids 3..259).
    let text = generate_json(tmp.path(), &["--prompt", "Hi", "--max-new-tokens", "1"]);
    assert_eq!(text["prompt_ids"], serde_json::json!([75, 108]));
    // The chat template wraps the message.
    let chat = generate_json(tmp.path(), &["--chat", "Hi", "--max-new-tokens", "1"]);
    let chat_ids = chat["prompt_ids"].as_array().unwrap();
    assert_eq!(chat_ids[0], 1, "starts with <|im_start|>");
    assert!(chat_ids.len() > 30);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    init_tiny(tmp.path(), "1");
    let run = |seed: &str| {
        generate_json(
            tmp.path(),
            &[
                "--prompt-ids",
                "5,6,7",
                "--max-new-tokens",
                "12",
                "--ignore-eos",
                "--temperature",
                "1.5",
                "--top-p",
                "0.95",
                "--seed",
                seed,
            ],
        )["output_ids"]
            .clone()
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    init_tiny(tmp.path(), "1");
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = generate_ids(tmp.path(), "1");
    assert_clear_error(&out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn config_with_a_missing_field_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    init_tiny(tmp.path(), "1");
    edit_config(tmp.path(), |config| {
        config.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    let out = generate_ids(tmp.path(), "1");
    assert_clear_error(&out, &["config.json", "missing field `num_hidden_layers`"]);
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    init_tiny(tmp.path(), "1");
    // Claim a fifth layer that the weights do not have.
    edit_config(tmp.path(), |config| {
        config["num_hidden_layers"] = 5.into();
    });
    let out = generate_ids(tmp.path(), "1");
    assert_clear_error(&out, &["missing tensor `model.layers.4."]);
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    init_tiny(tmp.path(), "1");
    edit_config(tmp.path(), |config| {
        config["max_position_embeddings"] = 8.into();
    });
    let ids = (1..=9).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let out = generate_ids(tmp.path(), &ids);
    assert_clear_error(&out, &["9 tokens", "context is 8 tokens"]);
}

/// A minimal llama GGUF v3 whose one tensor has ggml type 13 (Q5_K).
fn gguf_with_q5_k() -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes()); // version
    out.extend(1u64.to_le_bytes()); // tensors
    let kv_u32 = [
        ("llama.context_length", 64u32),
        ("llama.embedding_length", 256),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", 256),
        ("llama.attention.head_count", 2),
    ];
    out.extend((1 + kv_u32.len() as u64).to_le_bytes()); // metadata entries
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes()); // string
    string(&mut out, "llama");
    for (key, value) in kv_u32 {
        string(&mut out, key);
        out.extend(4u32.to_le_bytes()); // uint32
        out.extend(value.to_le_bytes());
    }
    string(&mut out, "token_embd.weight");
    out.extend(2u32.to_le_bytes()); // dims
    out.extend(256u64.to_le_bytes());
    out.extend(4u64.to_le_bytes());
    out.extend(13u32.to_le_bytes()); // Q5_K
    out.extend(0u64.to_le_bytes()); // offset
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.extend(vec![0u8; 4 * 176]); // 4 rows of one 256-element Q5_K block
    out
}

#[test]
fn gguf_with_an_unsupported_tensor_type_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("q5k.gguf");
    std::fs::write(&path, gguf_with_q5_k()).unwrap();
    let out = lorafleet(&[
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    assert_clear_error(&out, &["q5k.gguf", "token_embd.weight", "Q5_K"]);
}

#[test]
fn bench_forward_json_has_the_documented_keys() {
    let v = lorafleet_json(&[
        "bench",
        "forward",
        "--preset",
        "tiny",
        "--threads",
        "1",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(v["preset"], "tiny");
    assert_eq!(v["threads"], 1);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_sgemm_json_names_the_kernel_that_multiplied_the_weights() {
    for (dtype, kernels) in [
        ("f32", &["f32"][..]),
        ("bf16", &["bf16_amx", "bf16_avx512", "bf16_widened"][..]),
    ] {
        let v = lorafleet_json(&[
            "bench",
            "sgemm",
            "--dtype",
            dtype,
            "--threads",
            "1",
            "--runs",
            "1",
            "--json",
        ]);
        assert_eq!(v["dtype"], dtype);
        let kernel = v["kernel"].as_str().unwrap_or_default();
        assert!(kernels.contains(&kernel), "{dtype}: kernel {kernel:?}");
        assert!(v["peak_gflops"].as_f64().unwrap() > 0.0);
    }
}

/// The JSON a successful `lorafleet` command printed.
fn lorafleet_json(args: &[&str]) -> serde_json::Value {
    let out = lorafleet(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
