//! llama.cpp's tensors as HF's: `blk.{i}.attn_q.weight` renamed to
//! `model.layers.{i}.self_attn.q_proj.weight`, dimensions listed outermost
//! first, and the Q/K row permutation of llama.cpp's converter undone.
//!
//! Not here: decoding tensor bytes (`file`, `quant`), the config (`config`).

use super::file::GgufFile;
use crate::model::{HostTensor, LlamaConfig, ModelError, WeightMap};

/// llama.cpp's names of the tensors outside the layers, and HF's.
const TOP_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's names of a layer's tensors (after `blk.{i}.`), and HF's
/// (after `model.layers.{i}.`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// `name` renamed by the pairs: `from` picks which side of each pair it is
/// read on (0: llama.cpp, 1: HF).
fn rename(name: &str, from: usize) -> Option<String> {
    let to = 1 - from;
    let side = |pair: &(&'static str, &'static str)| if from == 0 { pair.0 } else { pair.1 };
    let other = |pair: &(&'static str, &'static str)| if to == 0 { pair.0 } else { pair.1 };
    if let Some(pair) = TOP_NAMES.iter().find(|pair| side(pair) == name) {
        return Some(other(pair).to_string());
    }
    let prefixes = ["blk.", "model.layers."];
    let (layer, suffix) = name.strip_prefix(prefixes[from])?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let pair = LAYER_NAMES.iter().find(|pair| side(pair) == suffix)?;
    Some(format!("{}{layer}.{}", prefixes[to], other(pair)))
}

/// The HF name of a llama.cpp tensor, or `None` for tensors the model does
/// not use (`rope_freqs.weight`, ...).
pub(super) fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    rename(gguf_name, 0)
}

/// The llama.cpp name of a HF tensor (the inverse of [`hf_tensor_name`]).
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    rename(hf_name, 1)
}

/// Every tensor the model uses, dequantized, renamed, in HF layout.
pub(super) fn hf_weights(
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
pub(super) fn unpermute_qk_rows(
    data: &[f32],
    heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<f32> {
    move_qk_rows(data, heads, head_dim, cols, false)
}

/// llama.cpp's converter permutation of q_proj / k_proj rows, the inverse
/// of [`unpermute_qk_rows`]: HF row `s * head_dim / 2 + i` becomes GGUF row
/// `2 i + s` within each head.
pub(super) fn permute_qk_rows(
    data: &[f32],
    heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<f32> {
    move_qk_rows(data, heads, head_dim, cols, true)
}

/// Moves each head's rows between the two layouts, `to_gguf` or back.
fn move_qk_rows(
    data: &[f32],
    heads: usize,
    head_dim: usize,
    cols: usize,
    to_gguf: bool,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for head in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                let hf = (head * head_dim + s * half + i) * cols;
                let gguf = (head * head_dim + 2 * i + s) * cols;
                let (from, to) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[to..to + cols].copy_from_slice(&data[from..from + cols]);
            }
        }
    }
    out
}
