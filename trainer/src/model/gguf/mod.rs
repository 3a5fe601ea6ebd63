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
    if let Some(other) = gguf
        .meta_str("llama.rope.scaling.type")
        .filter(|&kind| kind != "none")
    {
        return Err(bad(format!(
            "llama.rope.scaling.type {other:?} is not supported (only llama3 frequency \
             factors in rope_freqs.weight, or none)"
        )));
    }
    let mut eos_token_ids: Vec<u32> = Vec::new();
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = u32_meta(&format!("tokenizer.ggml.{key}"))
            && !eos_token_ids.contains(&id)
        {
            eos_token_ids.push(id);
        }
    }
    let mut config = LlamaConfig {
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
        rope_scaling: None,
        tie_word_embeddings: gguf.tensor("output.weight").is_none(),
        bos_token_id: u32_meta("tokenizer.ggml.bos_token_id"),
        eos_token_ids,
    };
    // The sizes are within their limits before any tensor is read.
    config.validate().map_err(bad)?;
    if let Some(info) = gguf.tensor("rope_freqs.weight") {
        let factors = gguf.read_f32(info, bytes, source)?;
        config.rope_scaling =
            llama3_scaling_from_rope_freqs(&factors, head_dim, rope_theta).map_err(bad)?;
        config.validate().map_err(bad)?;
    }
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
                1.0,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use half::f16;

    use super::*;

    /// One metadata value for [`GgufWriter`].
    pub(super) enum Meta {
        U32(u32),
        U64(u64),
        F32(f32),
        Bool(bool),
        Str(String),
        Strs(Vec<String>),
        I32s(Vec<i32>),
    }

    /// Writes small GGUF v3 files the way llama.cpp lays them out.
    pub(super) struct GgufWriter {
        pub(super) version: u32,
        pub(super) alignment: usize,
        pub(super) metadata: Vec<(String, Meta)>,
        /// Name, ggml dims (innermost first), type id, raw data.
        pub(super) tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl GgufWriter {
        pub(super) fn new() -> GgufWriter {
            GgufWriter {
                version: 3,
                alignment: 32,
                metadata: Vec::new(),
                tensors: Vec::new(),
            }
        }

        pub(super) fn meta(&mut self, key: &str, value: Meta) -> &mut GgufWriter {
            self.metadata.push((key.to_string(), value));
            self
        }

        pub(super) fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) {
            self.tensors
                .push((name.to_string(), dims.to_vec(), type_id, data));
        }

        pub(super) fn f32_tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) {
            let data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.tensor(name, dims, quant::GGML_F32, data);
        }

        pub(super) fn bytes(&self) -> Vec<u8> {
            fn string(out: &mut Vec<u8>, s: &str) {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            let mut out = b"GGUF".to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.metadata.len() as u64).to_le_bytes());
            for (key, value) in &self.metadata {
                string(&mut out, key);
                match value {
                    Meta::U32(n) => out.extend([4, 0, 0, 0].into_iter().chain(n.to_le_bytes())),
                    Meta::U64(n) => out.extend([10, 0, 0, 0].into_iter().chain(n.to_le_bytes())),
                    Meta::F32(x) => out.extend([6, 0, 0, 0].into_iter().chain(x.to_le_bytes())),
                    Meta::Bool(b) => out.extend([7, 0, 0, 0, u8::from(*b)]),
                    Meta::Str(s) => {
                        out.extend(8u32.to_le_bytes());
                        string(&mut out, s);
                    }
                    Meta::Strs(items) => {
                        out.extend([9, 0, 0, 0, 8, 0, 0, 0]);
                        out.extend((items.len() as u64).to_le_bytes());
                        items.iter().for_each(|s| string(&mut out, s));
                    }
                    Meta::I32s(items) => {
                        out.extend([9, 0, 0, 0, 5, 0, 0, 0]);
                        out.extend((items.len() as u64).to_le_bytes());
                        items.iter().for_each(|n| out.extend(n.to_le_bytes()));
                    }
                }
            }
            let mut offset = 0usize;
            let mut offsets = Vec::new();
            for (name, dims, type_id, data) in &self.tensors {
                string(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
                out.extend(type_id.to_le_bytes());
                out.extend((offset as u64).to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len()).next_multiple_of(self.alignment);
            }
            let data_start = out.len().next_multiple_of(self.alignment);
            out.resize(data_start, 0);
            for ((_, _, _, data), at) in self.tensors.iter().zip(offsets) {
                out.resize(data_start + at, 0);
                out.extend(data);
            }
            out
        }
    }

    /// Exact Q8_0 blocks for values that are integer multiples of `d`.
    fn q8_0(values: &[f32], d: f32) -> Vec<u8> {
        values
            .chunks(32)
            .flat_map(|block| {
                let scale = f16::from_f32(d).to_le_bytes().into_iter();
                scale.chain(block.iter().map(|&v| (v / d).round() as i8 as u8))
            })
            .collect()
    }

    /// Q4_0 (`min = None`, nibbles centred on 8) or Q4_1 blocks of `nibbles`.
    fn q4(nibbles: &[u8], d: f32, min: Option<f32>) -> Vec<u8> {
        let mut out = Vec::new();
        for block in nibbles.chunks(32) {
            out.extend(f16::from_f32(d).to_le_bytes());
            if let Some(m) = min {
                out.extend(f16::from_f32(m).to_le_bytes());
            }
            out.extend((0..16).map(|j| block[j] | (block[j + 16] << 4)));
        }
        out
    }

    /// What `convert_hf_to_gguf.py` does to q_proj / k_proj:
    /// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn permute_like_llama_cpp(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for s in 0..2 {
                for i in 0..half {
                    // Source index [h, s, i, :] lands at [h, i, s, :].
                    let from = ((h * 2 + s) * half + i) * cols;
                    let to = ((h * half + i) * 2 + s) * cols;
                    out[to..to + cols].copy_from_slice(&w[from..from + cols]);
                }
            }
        }
        out
    }

    fn pattern(len: usize, salt: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + salt * 13) % 23) as f32 / 4.0 - 2.0)
            .collect()
    }

    const HIDDEN: usize = 32;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 8;
    const FFN: usize = 64;
    const VOCAB: usize = 16;

    /// A one-layer GQA Llama with every supported storage type, and the HF
    /// tensors it must load as.
    pub(super) fn tiny_llama() -> (GgufWriter, BTreeMap<String, HostTensor>) {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Meta::Str("llama".into()))
            .meta("llama.context_length", Meta::U32(128))
            .meta("llama.embedding_length", Meta::U32(HIDDEN as u32))
            .meta("llama.block_count", Meta::U32(1))
            .meta("llama.feed_forward_length", Meta::U32(FFN as u32))
            .meta("llama.attention.head_count", Meta::U32(HEADS as u32))
            .meta("llama.attention.head_count_kv", Meta::U32(KV_HEADS as u32))
            .meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-6))
            .meta("llama.rope.freq_base", Meta::F32(500000.0))
            .meta("llama.vocab_size", Meta::U64(VOCAB as u64))
            .meta("tokenizer.ggml.bos_token_id", Meta::U32(1))
            .meta("tokenizer.ggml.eos_token_id", Meta::U32(2));
        let mut hf = BTreeMap::new();
        let mut add = |name: &str, shape: Vec<usize>, data: Vec<f32>| {
            hf.insert(name.to_string(), HostTensor::new(shape, data));
        };

        let embed: Vec<f32> = (0..VOCAB * HIDDEN)
            .map(|i| ((i * 3) % 17) as f32 * 0.5 - 4.0)
            .collect();
        w.tensor(
            "token_embd.weight",
            &[HIDDEN as u64, VOCAB as u64],
            quant::GGML_Q8_0,
            q8_0(&embed, 0.5),
        );
        add("model.embed_tokens.weight", vec![VOCAB, HIDDEN], embed);

        let norm = pattern(HIDDEN, 1);
        w.f32_tensor("blk.0.attn_norm.weight", &[HIDDEN as u64], &norm);
        add("model.layers.0.input_layernorm.weight", vec![HIDDEN], norm);

        let q = pattern(HEADS * HEAD_DIM * HIDDEN, 2);
        let q_gguf = permute_like_llama_cpp(&q, HEADS * HEAD_DIM, HIDDEN, HEADS);
        let q_f16 = q_gguf
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        w.tensor(
            "blk.0.attn_q.weight",
            &[HIDDEN as u64, 32],
            quant::GGML_F16,
            q_f16,
        );
        add(
            "model.layers.0.self_attn.q_proj.weight",
            vec![32, HIDDEN],
            q,
        );

        let k = pattern(KV_HEADS * HEAD_DIM * HIDDEN, 3);
        let k_gguf = permute_like_llama_cpp(&k, KV_HEADS * HEAD_DIM, HIDDEN, KV_HEADS);
        w.f32_tensor("blk.0.attn_k.weight", &[HIDDEN as u64, 16], &k_gguf);
        add(
            "model.layers.0.self_attn.k_proj.weight",
            vec![16, HIDDEN],
            k,
        );

        for (gguf, hf_name, rows, cols, salt) in [
            ("attn_v", "self_attn.v_proj", 16, HIDDEN, 4),
            ("attn_output", "self_attn.o_proj", HIDDEN, 32, 5),
            ("ffn_gate", "mlp.gate_proj", FFN, HIDDEN, 6),
        ] {
            let data = pattern(rows * cols, salt);
            w.f32_tensor(
                &format!("blk.0.{gguf}.weight"),
                &[cols as u64, rows as u64],
                &data,
            );
            add(
                &format!("model.layers.0.{hf_name}.weight"),
                vec![rows, cols],
                data,
            );
        }

        // ffn_up as Q4_1 (d = 0.25, m = -2), ffn_down as Q4_0 (d = 0.5).
        let up_nibbles: Vec<u8> = (0..FFN * HIDDEN).map(|i| ((i * 5) % 16) as u8).collect();
        let up = up_nibbles
            .iter()
            .map(|&n| f32::from(n) * 0.25 - 2.0)
            .collect();
        w.tensor(
            "blk.0.ffn_up.weight",
            &[HIDDEN as u64, FFN as u64],
            quant::GGML_Q4_1,
            q4(&up_nibbles, 0.25, Some(-2.0)),
        );
        add("model.layers.0.mlp.up_proj.weight", vec![FFN, HIDDEN], up);
        let down_nibbles: Vec<u8> = (0..HIDDEN * FFN)
            .map(|i| ((i * 11 + 3) % 16) as u8)
            .collect();
        let down = down_nibbles
            .iter()
            .map(|&n| (f32::from(n) - 8.0) * 0.5)
            .collect();
        w.tensor(
            "blk.0.ffn_down.weight",
            &[FFN as u64, HIDDEN as u64],
            quant::GGML_Q4_0,
            q4(&down_nibbles, 0.5, None),
        );
        add(
            "model.layers.0.mlp.down_proj.weight",
            vec![HIDDEN, FFN],
            down,
        );

        for (gguf, hf_name, salt) in [
            (
                "blk.0.ffn_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
                7,
            ),
            ("output_norm.weight", "model.norm.weight", 8),
        ] {
            let data = pattern(HIDDEN, salt);
            w.f32_tensor(gguf, &[HIDDEN as u64], &data);
            add(hf_name, vec![HIDDEN], data);
        }
        let head = pattern(VOCAB * HIDDEN, 9);
        w.f32_tensor("output.weight", &[HIDDEN as u64, VOCAB as u64], &head);
        add("lm_head.weight", vec![VOCAB, HIDDEN], head);

        // Tensors the model does not use are skipped, whatever their type.
        w.tensor("blk.0.unused_extra.weight", &[256], 13, vec![0; 176]);
        (w, hf)
    }

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

    /// The real model (REFERENCE.md §2). `examples/smollm2/fetch.sh` gets it.
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
}
