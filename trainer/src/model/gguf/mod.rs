//! llama.cpp GGUF files read into a [`LlamaConfig`], an HF-named,
//! HF-layout [`WeightMap`] and the embedded tokenizer, and written from
//! them (`writer`: a merged model as `export --format gguf` writes it).
//!
//! The container is parsed by `file` and tensors are dequantized to f32 by
//! `quant`; `config` turns the `llama.*` keys into a config (and a llama3
//! `rope_freqs.weight` tensor back into [`RopeScaling`](super::RopeScaling));
//! `hf_tensors` renames tensors from llama.cpp's `blk.{i}.attn_q.weight`
//! style to HF's `model.layers.{i}.self_attn.q_proj.weight` and undoes the
//! Q/K row permutation of llama.cpp's converter. This module puts them
//! together and reads the tokenizer metadata. Not here: building the
//! tokenizer (`crate::tokenizer::gguf`), the model itself.

mod config;
mod file;
mod hf_tensors;
mod quant;
mod writer;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod tests;

use std::path::Path;

use super::{LlamaConfig, ModelError, WeightMap};
use crate::tokenizer::TokenizerParts;
use crate::tokenizer::gguf::{GgufVocab, parts_from_gguf};
use config::llama_config;
use file::{GgufFile, MetaValue};
pub use hf_tensors::gguf_tensor_name;
use hf_tensors::hf_weights;
pub use writer::{
    GgufExport, GgufTensorType, GgufValue, tokenizer_metadata_from_gguf,
    tokenizer_metadata_from_hf_dir, write_gguf,
};

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
