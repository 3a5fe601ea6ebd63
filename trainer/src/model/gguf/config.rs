//! A GGUF file's `llama.*` metadata read into a [`LlamaConfig`], with the
//! llama3 RoPE scaling recovered from a `rope_freqs.weight` tensor.
//!
//! Not here: tensor names and layouts (`hf_tensors`), the container
//! (`file`), the tokenizer metadata (`gguf`).

use std::f64::consts::PI;

use super::file::{GgufFile, MetaValue};
use crate::model::{LlamaConfig, ModelError, RopeScaling};
use crate::tokenizer::gguf::GgufVocab;

/// The model's shape from the `llama.*` keys.
pub(super) fn llama_config(
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
pub(super) fn llama3_scaling_from_rope_freqs(
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
pub(super) fn llama3_rope_factor(s: &RopeScaling, wavelen: f64) -> f64 {
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
