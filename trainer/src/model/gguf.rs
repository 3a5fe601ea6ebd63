//! llama.cpp GGUF files read into a [`LlamaConfig`], an HF-named,
//! HF-layout [`WeightMap`] and the embedded tokenizer.
//!
//! The container is parsed by `gguf_file` and tensors are dequantized to
//! f32 by `gguf_quant` (both private submodules of this one). Here the
//! `llama.*` keys become a config, tensors are renamed from llama.cpp's
//! `blk.{i}.attn_q.weight` style to HF's
//! `model.layers.{i}.self_attn.q_proj.weight`, the Q/K row permutation of
//! llama.cpp's converter is undone, and a llama3 `rope_freqs.weight` tensor
//! is turned back into [`RopeScaling`]. Not here: building the tokenizer
//! (`crate::tokenizer::gguf`), the model itself, or writing GGUF files.

use std::f64::consts::PI;
use std::path::Path;

use super::{HostTensor, LlamaConfig, ModelError, RopeScaling, WeightMap};
use crate::tokenizer::TokenizerParts;
use crate::tokenizer::gguf::{GgufVocab, parts_from_gguf};

#[path = "gguf_file.rs"]
mod file;
#[path = "gguf_quant.rs"]
mod quant;

use file::{GgufFile, MetaValue};

/// What a GGUF file holds, in lorafleet's terms.
pub struct GgufModel {
    pub config: LlamaConfig,
    /// HF-named tensors in HF layout, dequantized to f32.
    pub weights: WeightMap,
    /// The embedded tokenizer; `None` when the file carries none.
    pub tokenizer: Option<TokenizerParts>,
}

/// Reads a llama-architecture GGUF file.
pub fn load_gguf(path: &Path) -> Result<GgufModel, ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and lives only for this call. As with any
    // mapped file, another process truncating it meanwhile could fault.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    load_gguf_bytes(&map, &path.display().to_string())
}

/// Reads a GGUF file's bytes; `source` names the file in errors.
pub fn load_gguf_bytes(bytes: &[u8], source: &str) -> Result<GgufModel, ModelError> {
    let gguf = GgufFile::parse(bytes, source)?;
    let bad_config = |message: String| ModelError::Config {
        file: source.to_string(),
        message,
    };
    match gguf.meta_str("general.architecture") {
        Some("llama") => {}
        Some(other) => {
            return Err(bad_config(format!(
                "general.architecture is {other:?}; only \"llama\" is supported"
            )));
        }
        None => return Err(bad_config("general.architecture is missing".into())),
    }
    let vocab = gguf_vocab(&gguf, source)?;
    let config = llama_config(&gguf, vocab.as_ref(), bytes, source)?;
    let weights = hf_weights(&gguf, &config, bytes, source)?;
    let tokenizer = match vocab {
        None => None,
        Some(vocab) => Some(parts_from_gguf(&vocab, source).map_err(|e| match e {
            crate::tokenizer::TokenizerError::Load { message, .. } => {
                bad_config(format!("embedded tokenizer: {message}"))
            }
            other => bad_config(format!("embedded tokenizer: {other}")),
        })?),
    };
    Ok(GgufModel {
        config,
        weights,
        tokenizer,
    })
}

/// The `tokenizer.*` metadata, or `None` when the file embeds no tokenizer.
fn gguf_vocab(gguf: &GgufFile, source: &str) -> Result<Option<GgufVocab>, ModelError> {
    let Some(model) = gguf.meta_str("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let bad = |key: &str, expected: &str| ModelError::Config {
        file: source.to_string(),
        message: format!("{key} must be {expected}"),
    };
    let array = |key: &str| match gguf.meta(key) {
        None => Ok(&[][..]),
        Some(MetaValue::Array(items)) => Ok(items.as_slice()),
        Some(_) => Err(bad(key, "an array")),
    };
    let strings = |key: &str| {
        array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::Str(s) => Ok(s.clone()),
                _ => Err(bad(key, "an array of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let token_id = |key: &str| match gguf.meta(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(key, "a token id")),
    };
    let token_types = array("tokenizer.ggml.token_type")?
        .iter()
        .map(|v| {
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| bad("tokenizer.ggml.token_type", "an array of integers"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(GgufVocab {
        model: model.to_string(),
        pre: gguf.meta_str("tokenizer.ggml.pre").map(str::to_string),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos: token_id("tokenizer.ggml.bos_token_id")?,
        eos: token_id("tokenizer.ggml.eos_token_id")?,
        add_bos: match gguf.meta("tokenizer.ggml.add_bos_token") {
            Some(MetaValue::Bool(b)) => Some(*b),
            _ => None,
        },
        chat_template: gguf.meta_str("tokenizer.chat_template").map(str::to_string),
    }))
}

/// The model's shape from the `llama.*` keys.
fn llama_config(
    gguf: &GgufFile,
    vocab: Option<&GgufVocab>,
    bytes: &[u8],
    source: &str,
) -> Result<LlamaConfig, ModelError> {
    let bad = |message: String| ModelError::Config {
        file: source.to_string(),
        message,
    };
    let opt_usize = |key: &str| -> Result<Option<usize>, ModelError> {
        let key = format!("llama.{key}");
        match gguf.meta(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{key} must be a non-negative integer, not {v:?}"))),
        }
    };
    let req_usize =
        |key: &str| opt_usize(key)?.ok_or_else(|| bad(format!("llama.{key} is missing")));
    let opt_f64 = |key: &str| -> Result<Option<f64>, ModelError> {
        let key = format!("llama.{key}");
        match gguf.meta(&key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(format!("{key} must be a number, not {v:?}"))),
        }
    };
    let u32_meta = |key: &str| {
        gguf.meta(key)
            .and_then(MetaValue::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };

    if opt_usize("expert_count")?.unwrap_or(0) > 0 {
        return Err(bad(
            "mixture-of-experts models (llama.expert_count) are not supported".into(),
        ));
    }
    let hidden_size = req_usize("embedding_length")?;
    let num_attention_heads = req_usize("attention.head_count")?;
    let num_key_value_heads = opt_usize("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let rope_dims = opt_usize("rope.dimension_count")?;
    let head_dim = match (opt_usize("attention.key_length")?, rope_dims) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => hidden_size / num_attention_heads.max(1),
    };
    if let Some(rope_dims) = rope_dims
        && rope_dims != head_dim
    {
        return Err(bad(format!(
            "llama.rope.dimension_count {rope_dims} differs from the head size {head_dim}; \
             partial rotary embeddings are not supported"
        )));
    }
    let vocab_size = match opt_usize("vocab_size")? {
        Some(n) => n,
        None => vocab
            .map(|v| v.tokens.len())
            .filter(|&n| n > 0)
            .or_else(|| {
                gguf.tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1))
                    .map(|&n| n as usize)
            })
            .ok_or_else(|| bad("llama.vocab_size is missing and there is no token list".into()))?,
    };
    let rope_theta = opt_f64("rope.freq_base")?.unwrap_or(10000.0);
    let rope_scaling = match gguf.meta_str("llama.rope.scaling.type") {
        None | Some("none") => match gguf.tensor("rope_freqs.weight") {
            None => None,
            Some(info) => {
                let factors = gguf.read_f32(info, bytes, source)?;
                llama3_scaling_from_rope_freqs(&factors, head_dim, rope_theta).map_err(bad)?
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "llama.rope.scaling.type {other:?} is not supported (only llama3 frequency \
                 factors in rope_freqs.weight, or none)"
            )));
        }
    };
    let mut eos_token_ids: Vec<u32> = Vec::new();
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = u32_meta(&format!("tokenizer.ggml.{key}"))
            && !eos_token_ids.contains(&id)
        {
            eos_token_ids.push(id);
        }
    }
    let config = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: req_usize("feed_forward_length")?,
        num_hidden_layers: req_usize("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings: opt_usize("context_length")?.unwrap_or(2048),
        rms_norm_eps: opt_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta,
        rope_scaling,
        tie_word_embeddings: gguf.tensor("output.weight").is_none(),
        bos_token_id: u32_meta("tokenizer.ggml.bos_token_id"),
        eos_token_ids,
    };
    config.validate().map_err(bad)?;
    Ok(config)
}

/// Recovers llama3 RoPE scaling from the per-frequency divisors llama.cpp's
/// converter stores in `rope_freqs.weight`. Only the frequencies are
/// determined by them, so `low_freq_factor` is taken as 1 (as every Llama 3
/// release has it); the result reproduces the stored factors.
fn llama3_scaling_from_rope_freqs(
    factors: &[f32],
    head_dim: usize,
    rope_theta: f64,
) -> Result<Option<RopeScaling>, String> {
    if factors.len() != head_dim / 2 {
        return Err(format!(
            "rope_freqs.weight has {} values, expected head_dim / 2 = {}",
            factors.len(),
            head_dim / 2
        ));
    }
    let factors: Vec<f64> = factors.iter().map(|&x| f64::from(x)).collect();
    if factors.iter().all(|&x| (x - 1.0).abs() < 1e-6) {
        return Ok(None);
    }
    let invalid = || "rope_freqs.weight does not follow the llama3 scaling formula".to_string();
    let factor = factors.iter().copied().fold(1.0, f64::max);
    let inv_wavelen = |i: usize| rope_theta.powf(-2.0 * i as f64 / head_dim as f64) / (2.0 * PI);
    // In the smooth band, smooth = (orig / wavelen - low) / (high - low) is
    // linear in 1 / wavelen: fit it through the band's two ends.
    let band: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|&(_, &v)| v > 1.0 + 1e-4 && v < factor * (1.0 - 1e-4))
        .map(|(i, &v)| {
            (
                inv_wavelen(i),
                (1.0 / v - 1.0 / factor) / (1.0 - 1.0 / factor),
            )
        })
        .collect();
    let (low, high, original) = match (band.first(), band.last()) {
        (Some(&(x0, s0)), Some(&(x1, s1))) if band.len() >= 2 => {
            let slope = (s1 - s0) / (x1 - x0);
            let intercept = s0 - slope * x0;
            if slope <= 0.0 || intercept >= 0.0 {
                return Err(invalid());
            }
            let high = 1.0 - 1.0 / intercept;
            (
                (1.0f64),
                (high * 1e4).round() / 1e4,
                (-slope / intercept).round(),
            )
        }
        // Too few points to fit: the defaults of Llama 3.1, if they fit.
        _ => (1.0, 4.0, 8192.0),
    };
    let scaling = RopeScaling {
        factor: (factor * 1e4).round() / 1e4,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: original as usize,
    };
    let reproduced = (0..factors.len()).all(|i| {
        let expected = llama3_rope_factor(&scaling, 1.0 / inv_wavelen(i));
        (expected - factors[i]).abs() <= 1e-3 * expected
    });
    if reproduced {
        Ok(Some(scaling))
    } else {
        Err(invalid())
    }
}

/// The divisor llama3 scaling applies to the frequency of wavelength `wavelen`.
fn llama3_rope_factor(s: &RopeScaling, wavelen: f64) -> f64 {
    let original = s.original_max_position_embeddings as f64;
    if wavelen < original / s.high_freq_factor {
        1.0
    } else if wavelen > original / s.low_freq_factor {
        s.factor
    } else {
        let smooth =
            (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        1.0 / ((1.0 - smooth) / s.factor + smooth)
    }
}

/// The HF name of a llama.cpp tensor, or `None` for tensors the model does
/// not use (`rope_freqs.weight`, ...).
fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let top = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some(name.to_string());
    }
    let (layer, suffix) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_suffix = match suffix {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_suffix}"))
}

/// Every tensor the model uses, dequantized, renamed, in HF layout.
fn hf_weights(
    gguf: &GgufFile,
    config: &LlamaConfig,
    bytes: &[u8],
    source: &str,
) -> Result<WeightMap, ModelError> {
    let mut weights = WeightMap::new(source);
    for info in &gguf.tensors {
        if info.name.starts_with("blk.") && info.name.ends_with(".bias") {
            return Err(ModelError::Config {
                file: source.to_string(),
                message: format!("tensor `{}`: bias tensors are not supported", info.name),
            });
        }
        let Some(hf_name) = hf_tensor_name(&info.name) else {
            continue;
        };
        let mut data = gguf.read_f32(info, bytes, source)?;
        // ggml lists the innermost dimension first; HF lists it last.
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let heads = if info.name.ends_with(".attn_q.weight") {
            Some(config.num_attention_heads)
        } else if info.name.ends_with(".attn_k.weight") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        if let Some(heads) = heads {
            let expected = vec![heads * config.head_dim, config.hidden_size];
            if shape != expected {
                return Err(ModelError::TensorShape {
                    file: source.to_string(),
                    name: hf_name,
                    expected,
                    found: shape,
                });
            }
            data = unpermute_qk_rows(&data, heads, config.head_dim, config.hidden_size);
        }
        weights.insert(hf_name, HostTensor::new(shape, data));
    }
    Ok(weights)
}

/// Undoes llama.cpp's `permute`: within each head, GGUF row `2 i + s` is HF
/// row `s * head_dim / 2 + i` (HF's rotate-half pairs from interleaved ones).
fn unpermute_qk_rows(data: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for head in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                let from = (head * head_dim + 2 * i + s) * cols;
                let to = (head * head_dim + s * half + i) * cols;
                out[to..to + cols].copy_from_slice(&data[from..from + cols]);
            }
        }
    }
    out
}
