//! Tests of the GGUF loader: config, tensors and tokenizer from the tiny
//! fixture file, the errors that refuse a file, and the real SmolLM2 model.

use std::f64::consts::PI;
use std::path::Path;

use super::config::{llama3_rope_factor, llama3_scaling_from_rope_freqs};
use super::fixture::{
    FFN, GgufWriter, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, Meta, VOCAB, pattern,
    permute_like_llama_cpp, tiny_llama,
};
use super::hf_tensors::unpermute_qk_rows;
use super::*;
use crate::model::RopeScaling;

fn load(w: &GgufWriter) -> Result<GgufModel, ModelError> {
    load_gguf_bytes(&w.bytes(), "tiny.gguf")
}

fn load_error(w: &GgufWriter) -> String {
    load(w)
        .err()
        .expect("the file should be refused")
        .to_string()
}

#[test]
fn loads_config_and_hf_weights_from_every_storage_type() {
    let (w, hf) = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, w.bytes()).unwrap();
    let model = load_gguf(&path).unwrap();
    let c = &model.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (HIDDEN, 1, HEADS, KV_HEADS)
    );
    assert_eq!(
        (c.head_dim, c.intermediate_size, c.vocab_size),
        (HEAD_DIM, FFN, VOCAB)
    );
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-6, 500000.0));
    assert_eq!(c.max_position_embeddings, 128);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.as_slice()),
        (Some(1), &[2][..])
    );
    assert!(!c.tie_word_embeddings && c.rope_scaling.is_none());
    assert!(model.tokenizer.is_none());

    let names: Vec<&str> = model.weights.names().collect();
    assert_eq!(names, hf.keys().map(String::as_str).collect::<Vec<_>>());
    for (name, want) in &hf {
        assert_eq!(model.weights.get(name), Some(want), "{name}");
    }
}

#[test]
fn without_output_weight_the_embeddings_are_tied() {
    let (mut w, _) = tiny_llama();
    w.tensors.retain(|t| t.0 != "output.weight");
    let model = load(&w).unwrap();
    assert!(model.config.tie_word_embeddings);
    assert!(!model.weights.contains("lm_head.weight"));
}

#[test]
fn unpermute_undoes_llama_cpp_permutation() {
    // One head of four rows: llama.cpp stores HF rows 0, 2, 1, 3.
    let hf: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let gguf = permute_like_llama_cpp(&hf, 4, 2, 1);
    assert_eq!(gguf, [0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
    assert_eq!(unpermute_qk_rows(&gguf, 1, 4, 2), hf);
    // MHA q_proj (9 heads of 64, as SmolLM2) and a GQA k_proj (3 of 64).
    for (heads, head_dim, cols) in [(9, 64, 5), (3, 64, 7), (4, 8, 3)] {
        let hf = pattern(heads * head_dim * cols, heads);
        let gguf = permute_like_llama_cpp(&hf, heads * head_dim, cols, heads);
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_qk_rows(&gguf, heads, head_dim, cols), hf);
    }
}

#[test]
fn unsupported_tensor_type_is_named_with_the_supported_ones() {
    let (mut w, _) = tiny_llama();
    let q = w
        .tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.attn_q.weight")
        .unwrap();
    (q.2, q.3) = (13, vec![0; 176 * 4]); // Q5_K: 256 elements in 176 bytes
    match load(&w).err().unwrap() {
        ModelError::UnsupportedDtype { file, name, dtype } => {
            assert_eq!(
                (file.as_str(), name.as_str()),
                ("tiny.gguf", "blk.0.attn_q.weight")
            );
            assert!(dtype.starts_with("Q5_K (supported: F32, F16"), "{dtype}");
        }
        other => panic!("expected UnsupportedDtype, got {other}"),
    }
}

#[test]
fn other_architectures_and_missing_keys_are_refused() {
    let (mut w, _) = tiny_llama();
    w.metadata[0].1 = Meta::Str("qwen2".into());
    assert_eq!(
        load_error(&w),
        "tiny.gguf: general.architecture is \"qwen2\"; only \"llama\" is supported"
    );
    let (mut w, _) = tiny_llama();
    w.metadata.retain(|(k, _)| k != "llama.embedding_length");
    assert_eq!(
        load_error(&w),
        "tiny.gguf: llama.embedding_length is missing"
    );
    let (mut w, _) = tiny_llama();
    w.f32_tensor("blk.0.attn_q.bias", &[32], &[0.0; 32]);
    assert!(load_error(&w).contains("bias tensors are not supported"));
    let (mut w, _) = tiny_llama();
    w.meta("llama.rope.scaling.type", Meta::Str("yarn".into()));
    assert!(load_error(&w).contains("llama.rope.scaling.type \"yarn\" is not supported"));
}

#[test]
fn absurd_sizes_in_metadata_are_refused_before_any_tensor_is_read() {
    for (key, value, message) in [
        (
            "llama.block_count",
            Meta::U64(1 << 30),
            "tiny.gguf: num_hidden_layers is 1073741824, over the limit of 1024",
        ),
        (
            "llama.embedding_length",
            Meta::U64(u64::MAX),
            "tiny.gguf: hidden_size is 18446744073709551615, over the limit of 65536",
        ),
        (
            "llama.feed_forward_length",
            Meta::U32(u32::MAX),
            "tiny.gguf: intermediate_size is 4294967295, over the limit of 262144",
        ),
        (
            "llama.context_length",
            Meta::U64(1 << 40),
            "tiny.gguf: max_position_embeddings is 1099511627776, over the limit of 16777216",
        ),
        (
            "llama.vocab_size",
            Meta::U32(1 << 30),
            "tiny.gguf: vocab_size is 1073741824, over the limit of 4194304",
        ),
    ] {
        let (mut w, _) = tiny_llama();
        w.metadata.retain(|(k, _)| k != key);
        w.meta(key, value);
        // A rope_freqs tensor far too short for any head size: the
        // bounds are checked before it is read.
        w.f32_tensor("rope_freqs.weight", &[1], &[1.0]);
        assert_eq!(load_error(&w), message, "{key}");
    }
}

/// The factors `convert_hf_to_gguf.py` writes to `rope_freqs.weight`.
fn llama3_factors(s: &RopeScaling, head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            llama3_rope_factor(s, 2.0 * PI / freq) as f32
        })
        .collect()
}

#[test]
fn llama3_scaling_is_recovered_from_rope_freqs() {
    let llama31 = RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let llama32 = RopeScaling {
        factor: 32.0,
        ..llama31
    };
    for (s, head_dim) in [(llama31, 128), (llama32, 64)] {
        let factors = llama3_factors(&s, head_dim, 500000.0);
        let got = llama3_scaling_from_rope_freqs(&factors, head_dim, 500000.0);
        assert_eq!(got, Ok(Some(s)));
    }
    assert_eq!(llama3_scaling_from_rope_freqs(&[1.0; 4], 8, 1e4), Ok(None));
    let garbage = llama3_scaling_from_rope_freqs(&[1.0, 3.0, 2.0, 5.0], 8, 1e4);
    assert!(garbage.unwrap_err().contains("does not follow the llama3"));

    // Through the loader: the tensor becomes config.rope_scaling.
    let (mut w, _) = tiny_llama();
    let factors = llama3_factors(&llama31, HEAD_DIM, 500000.0);
    w.f32_tensor("rope_freqs.weight", &[(HEAD_DIM / 2) as u64], &factors);
    let got = load(&w).unwrap().config.rope_scaling;
    // Four frequencies are too few to fit; the Llama 3.1 defaults fit them.
    assert_eq!(got, Some(llama31));
}

#[test]
fn embedded_tokenizer_is_built() {
    let (mut w, _) = tiny_llama();
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    tokens.extend((b'a'..=b'm').map(|b| (b as char).to_string()));
    tokens.push("ab".into());
    let mut types = vec![3; 3];
    types.resize(tokens.len(), 1);
    w.meta("tokenizer.ggml.model", Meta::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", Meta::Str("smollm".into()))
        .meta("tokenizer.ggml.tokens", Meta::Strs(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32s(types))
        .meta("tokenizer.ggml.merges", Meta::Strs(vec!["a b".into()]))
        .meta("tokenizer.ggml.add_bos_token", Meta::Bool(false))
        .meta("tokenizer.chat_template", Meta::Str("{{ x }}".into()));
    let parts = load(&w).unwrap().tokenizer.unwrap();
    assert_eq!(
        (parts.bos, parts.eos, parts.add_bos),
        (Some(1), Some(2), false)
    );
    assert_eq!(parts.chat_template.as_deref(), Some("{{ x }}"));
    let ids = parts
        .tokenizer
        .encode("<|im_start|>m<|im_end|>", false)
        .unwrap();
    assert_eq!(ids.get_ids(), [1, 15, 2]);

    let (mut w, _) = tiny_llama();
    w.meta("tokenizer.ggml.model", Meta::Str("llama".into()))
        .meta("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into()]));
    let err = load_error(&w);
    assert!(
        err.starts_with("tiny.gguf: embedded tokenizer: tokenizer.ggml.model \"llama\""),
        "{err}"
    );
}

/// The real model (README.md, SmolLM2). `examples/smollm2/fetch.sh` gets it.
#[test]
fn smollm2_135m_instruct_q4_1_loads() {
    if std::env::var("LORAFLEET_SKIP_SMOLLM2").as_deref() == Ok("1") {
        eprintln!("skipped: LORAFLEET_SKIP_SMOLLM2=1");
        return;
    }
    let path = std::env::var_os("LORAFLEET_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/smollm2/cache/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run examples/smollm2/fetch.sh (or set LORAFLEET_SKIP_SMOLLM2=1 to skip)",
        path.display()
    );
    let model = load_gguf(&path).unwrap();
    let c = &model.config;
    eprintln!("{c:?}");
    let want = LlamaConfig {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        max_position_embeddings: 8192,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: None,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    assert_eq!(c, &want);
    assert!(
        model.weights.len() >= 210,
        "{} tensors",
        model.weights.len()
    );
    assert_eq!(
        c.num_parameters(),
        model
            .weights
            .names()
            .map(|n| { model.weights.get(n).unwrap().data.len() })
            .sum::<usize>()
    );

    let parts = model
        .tokenizer
        .expect("SmolLM2's GGUF embeds its tokenizer");
    assert_eq!(
        (parts.bos, parts.eos, parts.add_bos),
        (Some(1), Some(2), false)
    );
    assert!(parts.chat_template.unwrap().contains("<|im_start|>"));
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n";
    let ids = parts
        .tokenizer
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    eprintln!("{text:?} -> {ids:?}");
    // As transformers encodes it (tests/fixtures/smollm2/expected.json).
    assert_eq!(
        ids,
        [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198]
    );
    assert_eq!(parts.tokenizer.decode(&ids, false).unwrap(), text);
    let prose = "Digits 2024, café, 🦀 and  spaces\tstay.";
    let ids = parts
        .tokenizer
        .encode(prose, false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(parts.tokenizer.decode(&ids, false).unwrap(), prose);
}
