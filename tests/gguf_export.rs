//! `export --merged --format gguf`, run as a user runs it: a tiny model is
//! made and adapted, exported as a HF folder and as GGUF files (f32, q8_0),
//! and the files are read by llama.cpp's own `gguf` Python package
//! (tests/gguf_export/read.py, the interpreter from LORAFLEET_PYTHON) and
//! by `generate`, which must continue a prompt from them as from the folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{lorafleet, repo, spec_in};
use serde_json::Value;
use trainer::model::{gguf, hf};

const LAYERS: usize = 4;

fn ok(args: &[&str]) -> String {
    let out = lorafleet(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tiny base model in `dir/base`, an adapter trained on it for three
/// steps, and the merged model exported to `dir/hf`, `dir/f32.gguf` and
/// `dir/q8_0.gguf`.
fn exported(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join("base");
    ok(&[
        "init-model",
        "--preset",
        "tiny",
        "--seed",
        "5",
        "-o",
        base.to_str().unwrap(),
    ]);
    let spec = spec_in(dir, "ci-tiny.yaml", |t| {
        t.replace("preset: tiny", &format!("path: {}", base.display()))
            .replace("max_steps: 6", "max_steps: 3")
    });
    ok(&["train", spec.to_str().unwrap()]);
    let adapter = dir.join("runs/ci-tiny/final");
    let export = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--merged",
            "--adapter",
            adapter.to_str().unwrap(),
            "--model",
            base.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let said = ok(&args);
        assert!(said.contains("28 adapters merged"), "{said}");
    };
    let (hf_dir, f32_file, q8_file) = (dir.join("hf"), dir.join("f32.gguf"), dir.join("q8_0.gguf"));
    export(&hf_dir, &[]);
    export(&f32_file, &["--format", "gguf", "--quant", "f32"]);
    export(&q8_file, &["--format", "gguf", "--quant", "q8_0"]);
    (hf_dir, f32_file, q8_file)
}

/// What tests/gguf_export/read.py prints for `file`.
fn read_with_gguf_py(file: &Path) -> Value {
    let python = std::env::var("LORAFLEET_PYTHON").expect(
        "LORAFLEET_PYTHON must name a Python with the `gguf` package (scripts/test sets it up)",
    );
    let out = Command::new(&python)
        .arg(repo("tests/gguf_export/read.py"))
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "read.py {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("read.py prints one JSON object")
}

/// The tensors of a read.py report, by name.
fn tensors(report: &Value) -> BTreeMap<String, Value> {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

/// The llama.cpp tensors of the tiny preset and their ggml shapes.
fn expected_shapes() -> BTreeMap<String, Vec<u64>> {
    let (hidden, ffn, vocab) = (256, 688, 1024);
    let mut shapes = BTreeMap::from([
        ("token_embd.weight".to_string(), vec![hidden, vocab]),
        ("output_norm.weight".to_string(), vec![hidden]),
        ("output.weight".to_string(), vec![hidden, vocab]),
    ]);
    for i in 0..LAYERS {
        for (name, shape) in [
            ("attn_norm", vec![hidden]),
            ("attn_q", vec![hidden, hidden]),
            ("attn_k", vec![hidden, hidden]),
            ("attn_v", vec![hidden, hidden]),
            ("attn_output", vec![hidden, hidden]),
            ("ffn_norm", vec![hidden]),
            ("ffn_gate", vec![hidden, ffn]),
            ("ffn_up", vec![hidden, ffn]),
            ("ffn_down", vec![ffn, hidden]),
        ] {
            shapes.insert(format!("blk.{i}.{name}.weight"), shape);
        }
    }
    shapes
}

#[test]
fn gguf_export_is_read_by_llama_cpps_gguf_package() {
    let tmp = tempfile::tempdir().unwrap();
    let (hf_dir, f32_file, q8_file) = exported(tmp.path());
    let f32_report = read_with_gguf_py(&f32_file);
    let q8_report = read_with_gguf_py(&q8_file);

    for (report, file_type) in [(&f32_report, 0), (&q8_report, 7)] {
        assert_eq!(report["version"], 3);
        assert_eq!(report["alignment"], 32);
        let meta = &report["metadata"];
        let value = |key: &str| meta[key]["value"].clone();
        assert_eq!(value("general.architecture"), "llama");
        assert_eq!(meta["general.file_type"]["type"], "UINT32");
        assert_eq!(value("general.file_type"), file_type);
        for (key, want) in [
            ("context_length", 2048),
            ("embedding_length", 256),
            ("block_count", LAYERS),
            ("feed_forward_length", 688),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 4),
            ("vocab_size", 1024),
            ("rope.dimension_count", 64),
        ] {
            let key = format!("llama.{key}");
            assert_eq!(meta[&key]["type"], "UINT32", "{key}");
            assert_eq!(meta[&key]["value"], want, "{key}");
        }
        assert_eq!(value("llama.rope.freq_base"), 10000.0);
        let eps = value("llama.attention.layer_norm_rms_epsilon");
        assert!((eps.as_f64().unwrap() - 1e-5).abs() < 1e-10, "{eps}");
        assert_eq!(value("tokenizer.ggml.model"), "gpt2");
        assert_eq!(value("tokenizer.ggml.pre"), "gpt2");
        let tokens = &meta["tokenizer.ggml.tokens"];
        assert_eq!(
            (tokens["item"].clone(), tokens["len"].clone()),
            ("STRING".into(), 1024.into())
        );
        assert_eq!(tokens["head"][1], "<|im_start|>");
        assert_eq!(meta["tokenizer.ggml.token_type"]["item"], "INT32");
        assert_eq!(meta["tokenizer.ggml.token_type"]["head"][0], 3);
        assert!(meta.get("tokenizer.ggml.merges").is_some());
        for (key, id) in [("bos", 0), ("eos", 2), ("padding", 0)] {
            let key = format!("tokenizer.ggml.{key}_token_id");
            assert_eq!(meta[&key]["type"], "UINT32", "{key}");
            assert_eq!(meta[&key]["value"], id, "{key}");
        }
        assert!(
            value("tokenizer.chat_template")
                .as_str()
                .unwrap()
                .contains("<|im_start|>")
        );

        let tensors = tensors(report);
        let shapes: BTreeMap<String, Vec<u64>> = tensors
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    serde_json::from_value(t["shape"].clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(shapes, expected_shapes());
        for (name, t) in &tensors {
            assert_eq!(t["offset"].as_u64().unwrap() % 32, 0, "{name}");
            let want = if shapes[name].len() == 1 || file_type == 0 {
                "F32"
            } else if name.ends_with("ffn_down.weight") {
                // Rows of 688 are not whole Q8_0 blocks of 32.
                "F16"
            } else {
                "Q8_0"
            };
            assert_eq!(t["type"], want, "{name}");
        }
    }

    // The q8_0 file holds, byte for byte, what gguf-py's reference
    // quantization makes of the f32 file's matrices.
    let f32_tensors = tensors(&f32_report);
    for (name, t) in tensors(&q8_report) {
        let reference = match t["type"].as_str().unwrap() {
            "Q8_0" => &f32_tensors[&name]["as_q8_0"],
            "F16" => &f32_tensors[&name]["as_f16"],
            _ => &f32_tensors[&name]["sha256"],
        };
        assert_eq!(&t["sha256"], reference, "{name}");
    }

    // Read back by lorafleet, the f32 file is the HF export exactly: names,
    // layout (Q and K rows permuted there and back) and values.
    let from_gguf = gguf::load_gguf(&f32_file).unwrap();
    let from_hf = hf::read_weights(&hf_dir).unwrap();
    assert_eq!(from_gguf.config, hf::read_config(&hf_dir).unwrap());
    let names: Vec<&str> = from_gguf.weights.names().collect();
    assert_eq!(names, from_hf.names().collect::<Vec<_>>());
    for name in names {
        assert_eq!(from_gguf.weights.get(name), from_hf.get(name), "{name}");
    }
}

/// `generate --json` of `model` on `prompt`: (prompt ids, output ids).
fn generate(model: &Path, prompt: &str) -> (Value, Vec<u64>) {
    let text = ok(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "24",
        "--ignore-eos",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&text).unwrap();
    let output = serde_json::from_value(v["output_ids"].clone()).unwrap();
    (v["prompt_ids"].clone(), output)
}

#[test]
fn gguf_export_generates_what_the_hf_export_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let (hf_dir, f32_file, q8_file) = exported(tmp.path());
    for prompt in ["The capital of", "Once upon a time, there"] {
        let (hf_prompt, hf_ids) = generate(&hf_dir, prompt);
        let (f32_prompt, f32_ids) = generate(&f32_file, prompt);
        let (q8_prompt, q8_ids) = generate(&q8_file, prompt);
        assert_eq!(hf_ids.len(), 24);
        // The embedded tokenizer encodes the prompt as tokenizer.json does.
        assert_eq!(f32_prompt, hf_prompt, "{prompt}");
        assert_eq!(q8_prompt, hf_prompt, "{prompt}");
        assert_eq!(
            f32_ids, hf_ids,
            "{prompt}: f32 decodes greedily as the folder does"
        );
        // Measured: all 24 tokens agree; Q8_0's rounding (half a step of
        // amax/127 per weight) may in principle flip a late near-tie.
        assert_eq!(q8_ids[..8], hf_ids[..8], "{prompt}: q8_0's first tokens");
    }
}

#[test]
fn gguf_flags_are_checked_before_anything_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let run = |extra: &[&str], out: &str| {
        let mut args = vec![
            "export",
            "--merged",
            "--adapter",
            missing.to_str().unwrap(),
            "--model",
            missing.to_str().unwrap(),
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        let out = lorafleet(&args);
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&["--quant", "q8_0"], "folder");
    assert!(err.contains("--quant applies to --format gguf"), "{err}");
    let err = run(&["--format", "gguf"], "model.bin");
    assert!(err.contains("name it FILE.gguf (got model.bin)"), "{err}");
    let err = run(&["--format", "gguf", "--quant", "q4"], "m.gguf");
    assert!(err.contains("q8_0"), "{err}");
}
