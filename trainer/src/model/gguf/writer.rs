//! Writing a Llama model as a llama.cpp GGUF v3 file: `llama.*` metadata
//! from a [`LlamaConfig`], HF-named tensors renamed to llama.cpp's names
//! with Q/K rows permuted back to llama.cpp's interleaved layout, norms in
//! F32 and matrices in F32, F16 or Q8_0, and the `tokenizer.*` metadata of
//! a byte-level BPE tokenizer (from a HF `tokenizer.json`, or copied from a
//! GGUF file).
//!
//! Files are laid out as llama.cpp's `gguf-py` writes them (32-byte
//! alignment), so that llama.cpp and this crate's reader both load them.
//! Not here: merging adapters (`crate::lora`), reading GGUF files (the
//! parent module), SentencePiece vocabularies.

use std::borrow::Cow;
use std::collections::HashMap;
use std::f64::consts::PI;
use std::io::Write;
use std::path::Path;

use half::f16;
use serde_json::Value;

use super::config::llama3_rope_factor;
use super::file::{GgufFile, MetaValue};
use super::hf_tensors::{gguf_tensor_name, permute_qk_rows};
use super::quant::{self, QK};
use crate::model::{LlamaConfig, ModelError, WeightMap};
use crate::tokenizer::gguf::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED};

/// Where every tensor's data starts, as a multiple of (GGUF's default).
const ALIGNMENT: u64 = 32;
/// `tokenizer.ggml.token_type` of the ids a tokenizer leaves unassigned.
const TOKEN_TYPE_UNUSED: i32 = 5;

/// How the file stores its matrices; 1-D tensors (norms) are always F32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTensorType {
    F32,
    F16,
    /// ggml's blocks of 32 signed bytes with an f16 scale. A matrix whose
    /// rows are not whole blocks is written as F16, as llama.cpp's
    /// converter does.
    Q8_0,
}

impl GgufTensorType {
    /// The ggml type id of the matrices.
    fn ggml_type(self) -> u32 {
        match self {
            GgufTensorType::F32 => quant::GGML_F32,
            GgufTensorType::F16 => quant::GGML_F16,
            GgufTensorType::Q8_0 => quant::GGML_Q8_0,
        }
    }

    /// `general.file_type`, llama.cpp's `llama_ftype`: all F32 is 0,
    /// mostly F16 is 1, mostly Q8_0 is 7.
    pub fn file_type(self) -> u32 {
        match self {
            GgufTensorType::F32 => 0,
            GgufTensorType::F16 => 1,
            GgufTensorType::Q8_0 => 7,
        }
    }
}

/// One metadata value, typed as llama.cpp expects its key to be.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// What [`write_gguf`] writes.
pub struct GgufExport<'a> {
    /// `general.name`.
    pub name: &'a str,
    pub config: &'a LlamaConfig,
    /// HF-named tensors in HF layout.
    pub weights: &'a WeightMap,
    pub tensor_type: GgufTensorType,
    /// `tokenizer.*` keys; empty for a file without a tokenizer.
    pub tokenizer: &'a [(String, GgufValue)],
}

/// One tensor as it goes into the file.
struct PlannedTensor<'a> {
    name: String,
    /// ggml order: innermost (row length) first.
    dims: Vec<u64>,
    type_id: u32,
    data: Cow<'a, [f32]>,
}

impl PlannedTensor<'_> {
    fn byte_len(&self) -> u64 {
        let elements = self.data.len() as u64;
        match self.type_id {
            quant::GGML_F32 => elements * 4,
            quant::GGML_F16 => elements * 2,
            _ => elements / QK as u64 * (2 + QK as u64),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self.type_id {
            quant::GGML_F32 => self.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            quant::GGML_F16 => self
                .data
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            _ => quantize_q8_0(&self.data),
        }
    }
}

/// Writes `model` to `path` as a GGUF v3 file. The file appears whole or
/// not at all: it is written next to `path` and renamed into place.
/// Returns the number of bytes written.
pub fn write_gguf(path: &Path, model: &GgufExport) -> Result<u64, ModelError> {
    let source = path.display().to_string();
    let tensors = plan_tensors(model, &source)?;
    let metadata = metadata(model);

    let mut header = Vec::new();
    header.extend(b"GGUF");
    header.extend(3u32.to_le_bytes());
    header.extend((tensors.len() as u64).to_le_bytes());
    header.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in &metadata {
        put_string(&mut header, key);
        put_value(&mut header, value);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in &tensors {
        put_string(&mut header, &t.name);
        header.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| header.extend(d.to_le_bytes()));
        header.extend(t.type_id.to_le_bytes());
        header.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.byte_len()).next_multiple_of(ALIGNMENT);
    }
    header.resize(
        (header.len() as u64).next_multiple_of(ALIGNMENT) as usize,
        0,
    );

    let partial = path.with_extension("gguf.partial");
    let io = |e| ModelError::io(&partial, e);
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&header).map_err(io)?;
    let mut written = 0u64;
    for (t, at) in tensors.iter().zip(offsets) {
        out.write_all(&vec![0; (at - written) as usize])
            .map_err(io)?;
        let bytes = t.encode();
        out.write_all(&bytes).map_err(io)?;
        written = at + bytes.len() as u64;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&partial, path).map_err(|e| ModelError::io(path, e))?;
    Ok(header.len() as u64 + written)
}

/// Every tensor of the file in llama.cpp's order, checked against the config.
fn plan_tensors<'a>(
    model: &GgufExport<'a>,
    source: &str,
) -> Result<Vec<PlannedTensor<'a>>, ModelError> {
    let config = model.config;
    let mut expected = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..config.num_hidden_layers {
        for suffix in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            expected.push(format!("model.layers.{i}.{suffix}.weight"));
        }
    }
    expected.push("model.norm.weight".to_string());
    if !config.tie_word_embeddings {
        expected.push("lm_head.weight".to_string());
    }
    let bad = |message: String| ModelError::Config {
        file: source.to_string(),
        message,
    };
    if let Some(extra) = model
        .weights
        .names()
        .find(|n| !expected.iter().any(|e| e == n) && *n != "lm_head.weight")
    {
        return Err(bad(format!(
            "tensor `{extra}` has no place in a llama GGUF file"
        )));
    }

    let mut planned = Vec::with_capacity(expected.len() + 1);
    if let Some(scaling) = &config.rope_scaling {
        let half = config.head_dim / 2;
        let factors = (0..half)
            .map(|i| {
                let wavelen = 2.0
                    * PI
                    * config
                        .rope_theta
                        .powf(2.0 * i as f64 / config.head_dim as f64);
                llama3_rope_factor(scaling, wavelen) as f32
            })
            .collect();
        planned.push(PlannedTensor {
            name: "rope_freqs.weight".into(),
            dims: vec![half as u64],
            type_id: quant::GGML_F32,
            data: Cow::Owned(factors),
        });
    }
    for hf_name in &expected {
        let tensor = model
            .weights
            .get(hf_name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: model.weights.source.clone(),
                name: hf_name.clone(),
            })?;
        let name = gguf_tensor_name(hf_name).expect("every expected name has a GGUF name");
        let heads = if hf_name.ends_with("q_proj.weight") {
            Some(config.num_attention_heads)
        } else if hf_name.ends_with("k_proj.weight") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        let data = match heads {
            Some(heads) => {
                let want = vec![heads * config.head_dim, config.hidden_size];
                if tensor.shape != want {
                    return Err(ModelError::TensorShape {
                        file: model.weights.source.clone(),
                        name: hf_name.clone(),
                        expected: want,
                        found: tensor.shape.clone(),
                    });
                }
                Cow::Owned(permute_qk_rows(
                    &tensor.data,
                    heads,
                    config.head_dim,
                    config.hidden_size,
                ))
            }
            None => Cow::Borrowed(tensor.data.as_slice()),
        };
        let dims: Vec<u64> = tensor.shape.iter().rev().map(|&d| d as u64).collect();
        let type_id = match dims.as_slice() {
            [_] => quant::GGML_F32,
            [row, _] => match model.tensor_type {
                GgufTensorType::Q8_0 if !row.is_multiple_of(QK as u64) => quant::GGML_F16,
                other => other.ggml_type(),
            },
            _ => {
                return Err(bad(format!(
                    "tensor `{hf_name}` has shape {:?}; only 1-D and 2-D tensors are written",
                    tensor.shape
                )));
            }
        };
        planned.push(PlannedTensor {
            name,
            dims,
            type_id,
            data,
        });
    }
    Ok(planned)
}

/// The file's metadata: `general.*`, `llama.*`, then `tokenizer.*`, with
/// the config's BOS/EOS ids where the tokenizer names none.
fn metadata(model: &GgufExport) -> Vec<(String, GgufValue)> {
    let c = model.config;
    let u32_of = |n: usize| GgufValue::U32(n as u32);
    let mut meta: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::Str("llama".into()),
        ),
        ("general.name".into(), GgufValue::Str(model.name.into())),
        (
            "general.file_type".into(),
            GgufValue::U32(model.tensor_type.file_type()),
        ),
    ];
    if model.tensor_type == GgufTensorType::Q8_0 {
        // ggml's current quantization format.
        meta.push(("general.quantization_version".into(), GgufValue::U32(2)));
    }
    let llama = [
        ("context_length", u32_of(c.max_position_embeddings)),
        ("embedding_length", u32_of(c.hidden_size)),
        ("block_count", u32_of(c.num_hidden_layers)),
        ("feed_forward_length", u32_of(c.intermediate_size)),
        ("attention.head_count", u32_of(c.num_attention_heads)),
        ("attention.head_count_kv", u32_of(c.num_key_value_heads)),
        ("rope.freq_base", GgufValue::F32(c.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
        ("vocab_size", u32_of(c.vocab_size)),
        ("rope.dimension_count", u32_of(c.head_dim)),
    ];
    meta.extend(llama.into_iter().map(|(k, v)| (format!("llama.{k}"), v)));
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        meta.push(("llama.attention.key_length".into(), u32_of(c.head_dim)));
        meta.push(("llama.attention.value_length".into(), u32_of(c.head_dim)));
    }
    meta.extend(model.tokenizer.iter().cloned());

    let has = |meta: &[(String, GgufValue)], key: &str| meta.iter().any(|(k, _)| k == key);
    if let Some(bos) = c.bos_token_id
        && !has(&meta, "tokenizer.ggml.bos_token_id")
    {
        meta.push(("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(bos)));
    }
    let end_keys =
        ["eos_token_id", "eot_token_id", "eom_token_id"].map(|k| format!("tokenizer.ggml.{k}"));
    let named: Vec<u32> = meta
        .iter()
        .filter(|(k, _)| end_keys.contains(k))
        .filter_map(|(_, v)| match v {
            GgufValue::U32(id) => Some(*id),
            _ => None,
        })
        .collect();
    let mut free_keys = end_keys
        .iter()
        .filter(|k| !has(&meta, k))
        .cloned()
        .collect::<Vec<_>>()
        .into_iter();
    for &id in c.eos_token_ids.iter().filter(|id| !named.contains(id)) {
        let Some(key) = free_keys.next() else { break };
        meta.push((key, GgufValue::U32(id)));
    }
    meta
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A value with its GGUF type id (`gguf_type`): u32 4, i32 5, f32 6,
/// bool 7, string 8, array 9.
fn put_value(out: &mut Vec<u8>, value: &GgufValue) {
    let array_header = |out: &mut Vec<u8>, item_type: u32, len: usize| {
        out.extend(9u32.to_le_bytes());
        out.extend(item_type.to_le_bytes());
        out.extend((len as u64).to_le_bytes());
    };
    match value {
        GgufValue::U32(n) => {
            out.extend(4u32.to_le_bytes());
            out.extend(n.to_le_bytes());
        }
        GgufValue::F32(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        GgufValue::Bool(b) => {
            out.extend(7u32.to_le_bytes());
            out.push(u8::from(*b));
        }
        GgufValue::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_string(out, s);
        }
        GgufValue::Strs(items) => {
            array_header(out, 8, items.len());
            items.iter().for_each(|s| put_string(out, s));
        }
        GgufValue::I32s(items) => {
            array_header(out, 5, items.len());
            items.iter().for_each(|n| out.extend(n.to_le_bytes()));
        }
        GgufValue::F32s(items) => {
            array_header(out, 6, items.len());
            items.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
    }
}

/// ggml's reference `quantize_row_q8_0`: per block of 32, `d = amax / 127`
/// stored as f16 and each value rounded (half away from zero) from
/// `x / d`, computed with the f32 `d`. `values.len()` is whole blocks.
pub(super) fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * (2 + QK));
    for block in values.chunks_exact(QK) {
        let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

/// The `tokenizer.*` metadata of the byte-level BPE tokenizer in a HF
/// model folder (`tokenizer.json`, and `tokenizer_config.json` or
/// `chat_template.jinja` when present), as llama.cpp's converter writes
/// it: model `gpt2`, the pre-tokenizer's name, `vocab_size` tokens (ids the
/// tokenizer leaves free become `[PAD{id}]` of type unused), token types
/// (special added tokens are control tokens, other added ones user-defined),
/// merges, special token ids, `add_bos_token` and the chat template.
pub fn tokenizer_metadata_from_hf_dir(
    dir: &Path,
    vocab_size: usize,
) -> Result<Vec<(String, GgufValue)>, ModelError> {
    let path = dir.join("tokenizer.json");
    let file = path.display().to_string();
    let bad = |message: String| ModelError::Config {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "tokenizer model {} cannot be written to GGUF (only byte-level BPE can)",
            model["type"]
        )));
    }
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "pre-tokenizer {} has no llama.cpp name (known: GPT-2's ByteLevel, \
             SmolLM's Digits + ByteLevel, Llama 3's Split + ByteLevel)",
            json["pre_tokenizer"]
        ))
    })?;

    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut place = |token: &str, id: Option<u64>, token_type: i32| match id {
        Some(id) if (id as usize) < vocab_size => {
            tokens[id as usize] = Some((token.to_string(), token_type));
            ids.insert(token.to_string(), id as u32);
            Ok(())
        }
        _ => Err(bad(format!(
            "token {token:?} has id {id:?}, outside the model's vocab_size {vocab_size}"
        ))),
    };
    for (token, id) in model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?
    {
        place(token, id.as_u64(), TOKEN_TYPE_NORMAL)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let content = added["content"]
            .as_str()
            .ok_or_else(|| bad("an added token has no content".into()))?;
        let token_type = if added["special"].as_bool() == Some(true) {
            TOKEN_TYPE_CONTROL
        } else {
            TOKEN_TYPE_USER_DEFINED
        };
        place(content, added["id"].as_u64(), token_type)?;
    }
    let (tokens, token_types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| t.unwrap_or_else(|| (format!("[PAD{id}]"), TOKEN_TYPE_UNUSED)))
        .unzip();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not a list".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Some(format!("{a} {b}")),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| bad("model.merges holds something other than pairs".into()))?;

    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), GgufValue::Str(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), GgufValue::Strs(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufValue::I32s(token_types),
        ),
        ("tokenizer.ggml.merges".to_string(), GgufValue::Strs(merges)),
    ];

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Value = match std::fs::read_to_string(&cfg_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: cfg_path.display().to_string(),
            message: format!("not JSON: {e}"),
        })?,
        Err(_) => Value::Null,
    };
    for (key, gguf_key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        let content = match &cfg[key] {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(&id) = content.and_then(|c| ids.get(c)) {
            meta.push((format!("tokenizer.ggml.{gguf_key}"), GgufValue::U32(id)));
        }
    }
    if let Some(add_bos) = cfg["add_bos_token"].as_bool() {
        meta.push((
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(add_bos),
        ));
    }
    let template = match &cfg["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    if let Some(template) = template {
        meta.push(("tokenizer.chat_template".into(), GgufValue::Str(template)));
    }
    Ok(meta)
}

/// llama.cpp's `tokenizer.ggml.pre` name for a HF pre-tokenizer, if it is
/// one of the byte-level ones the reader rebuilds.
fn pre_tokenizer_name(pre: &Value) -> Option<&'static str> {
    let byte_level_with_regex =
        |v: &Value| (v["type"] == "ByteLevel").then(|| v["use_regex"].as_bool().unwrap_or(true));
    if byte_level_with_regex(pre) == Some(true) {
        return Some("gpt2");
    }
    if pre["type"] != "Sequence" {
        return None;
    }
    match pre["pretokenizers"].as_array()?.as_slice() {
        [digits, byte_level]
            if digits["type"] == "Digits"
                && digits["individual_digits"] == true
                && byte_level_with_regex(byte_level) == Some(true) =>
        {
            Some("smollm")
        }
        // Llama 3's regex keeps runs of up to three digits together.
        [split, byte_level]
            if split["type"] == "Split"
                && split["pattern"]["Regex"]
                    .as_str()
                    .is_some_and(|r| r.contains(r"\p{N}{1,3}"))
                && byte_level_with_regex(byte_level) == Some(false) =>
        {
            Some("llama-bpe")
        }
        _ => None,
    }
}

/// The `tokenizer.*` metadata of a GGUF file that the reader understands,
/// copied with the types llama.cpp expects (token ids u32, token types i32).
pub fn tokenizer_metadata_from_gguf(path: &Path) -> Result<Vec<(String, GgufValue)>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let source = path.display().to_string();
    let gguf = GgufFile::parse(&bytes, &source)?;
    let bad = |key: &str, value: &MetaValue| ModelError::Config {
        file: source.clone(),
        message: format!("{key} has an unexpected value {value:?}"),
    };
    let mut meta = Vec::new();
    for (key, value) in &gguf.metadata {
        let Some(name) = key.strip_prefix("tokenizer.") else {
            continue;
        };
        let items = || match value {
            MetaValue::Array(items) => Some(items.as_slice()),
            _ => None,
        };
        let converted = match name {
            "ggml.model" | "ggml.pre" | "chat_template" => match value {
                MetaValue::Str(s) => Some(GgufValue::Str(s.clone())),
                _ => None,
            },
            "ggml.tokens" | "ggml.merges" => items().and_then(|items| {
                items
                    .iter()
                    .map(|v| match v {
                        MetaValue::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .map(GgufValue::Strs)
            }),
            "ggml.token_type" => items().and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_i64().and_then(|n| i32::try_from(n).ok()))
                    .collect::<Option<Vec<_>>>()
                    .map(GgufValue::I32s)
            }),
            "ggml.scores" => items().and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<_>>>()
                    .map(GgufValue::F32s)
            }),
            "ggml.add_bos_token" | "ggml.add_eos_token" | "ggml.add_space_prefix" => match value {
                MetaValue::Bool(b) => Some(GgufValue::Bool(*b)),
                _ => None,
            },
            _ if name.starts_with("ggml.") && name.ends_with("_token_id") => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(GgufValue::U32),
            // Keys the reader does not use are left out.
            _ => continue,
        };
        meta.push((key.clone(), converted.ok_or_else(|| bad(key, value))?));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::super::hf_tensors::{hf_tensor_name, unpermute_qk_rows};
    use super::super::{load_gguf, load_gguf_bytes};
    use super::*;
    use crate::model::init::random_weights;
    use crate::model::{HostTensor, RopeScaling};
    use crate::tokenizer::TextTokenizer;

    /// A two-layer GQA model whose FFN rows (48) are not whole Q8_0 blocks.
    fn small_config() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 300,
            hidden_size: 64,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-6,
            rope_theta: 500000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            bos_token_id: Some(0),
            eos_token_ids: vec![2],
        }
    }

    fn write(
        dir: &Path,
        config: &LlamaConfig,
        weights: &WeightMap,
        tensor_type: GgufTensorType,
        tokenizer: &[(String, GgufValue)],
    ) -> std::path::PathBuf {
        let path = dir.join("m.gguf");
        let export = GgufExport {
            name: "small",
            config,
            weights,
            tensor_type,
            tokenizer,
        };
        let len = write_gguf(&path, &export).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert!(!dir.join("m.gguf.partial").exists());
        path
    }

    fn tensor_types(path: &Path) -> HashMap<String, u32> {
        let bytes = std::fs::read(path).unwrap();
        let gguf = GgufFile::parse(&bytes, "m.gguf").unwrap();
        gguf.tensors
            .iter()
            .map(|t| (t.name.clone(), t.type_id))
            .collect()
    }

    #[test]
    fn f32_round_trips_exactly_with_config_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let weights = random_weights(&config, 7);
        let path = write(dir.path(), &config, &weights, GgufTensorType::F32, &[]);
        let back = load_gguf(&path).unwrap();
        assert_eq!(back.config, config);
        assert!(back.tokenizer.is_none());
        let names: Vec<&str> = back.weights.names().collect();
        assert_eq!(names, weights.names().collect::<Vec<_>>());
        for name in names {
            assert_eq!(back.weights.get(name), weights.get(name), "{name}");
        }

        let bytes = std::fs::read(&path).unwrap();
        let gguf = GgufFile::parse(&bytes, "m.gguf").unwrap();
        assert_eq!(&bytes[..8], b"GGUF\x03\x00\x00\x00");
        assert_eq!(gguf.data_start % 32, 0);
        let meta = |k: &str| gguf.meta(k).unwrap().clone();
        assert_eq!(meta("general.architecture"), MetaValue::Str("llama".into()));
        assert_eq!(meta("general.name"), MetaValue::Str("small".into()));
        assert_eq!(meta("general.file_type"), MetaValue::Uint(0));
        for (key, want) in [
            ("context_length", 256),
            ("embedding_length", 64),
            ("block_count", 2),
            ("feed_forward_length", 48),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
            ("vocab_size", 300),
            ("rope.dimension_count", 16),
        ] {
            assert_eq!(
                meta(&format!("llama.{key}")),
                MetaValue::Uint(want),
                "{key}"
            );
        }
        assert_eq!(meta("llama.rope.freq_base"), MetaValue::F32(500000.0));
        assert_eq!(
            meta("llama.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-6)
        );
        assert_eq!(meta("tokenizer.ggml.bos_token_id"), MetaValue::Uint(0));
        assert_eq!(meta("tokenizer.ggml.eos_token_id"), MetaValue::Uint(2));
        assert!(gguf.meta("llama.attention.key_length").is_none());
        assert!(tensor_types(&path).values().all(|&t| t == quant::GGML_F32));
    }

    #[test]
    fn q8_0_stays_within_half_a_step_and_f16_rows_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let weights = random_weights(&config, 8);
        let path = write(dir.path(), &config, &weights, GgufTensorType::Q8_0, &[]);
        let types = tensor_types(&path);
        assert_eq!(types["blk.0.attn_q.weight"], quant::GGML_Q8_0);
        assert_eq!(types["token_embd.weight"], quant::GGML_Q8_0);
        assert_eq!(types["blk.1.ffn_up.weight"], quant::GGML_Q8_0);
        // ffn_down rows are 48 long: not whole blocks, so F16.
        assert_eq!(types["blk.1.ffn_down.weight"], quant::GGML_F16);
        assert_eq!(types["blk.0.attn_norm.weight"], quant::GGML_F32);
        assert_eq!(types["output_norm.weight"], quant::GGML_F32);

        let back = load_gguf(&path).unwrap();
        assert_eq!(back.config, config);
        for name in weights.names() {
            let (want, got) = (weights.get(name).unwrap(), back.weights.get(name).unwrap());
            assert_eq!(got.shape, want.shape, "{name}");
            if want.shape.len() == 1 {
                assert_eq!(got, want, "{name}");
                continue;
            }
            let row = want.shape[1];
            let block = if row % QK == 0 { QK } else { 1 };
            for (w, g) in want.data.chunks(block).zip(got.data.chunks(block)) {
                let amax = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                // Half a step of amax / 127, plus the f16 rounding of the
                // scale (2^-11 relative) over up to 127 steps.
                let tolerance = if block == QK {
                    amax / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-7
                } else {
                    amax / 2048.0 + 1e-7
                };
                for (a, b) in w.iter().zip(g) {
                    assert!((a - b).abs() <= tolerance, "{name}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q8_0_matches_ggml_on_a_known_block() {
        let mut block: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        block[31] = 127.0;
        let bytes = quantize_q8_0(&block);
        assert_eq!(bytes.len(), 34);
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 1.0);
        assert_eq!(quant::dequantize(quant::GGML_Q8_0, &bytes).unwrap(), block);
        // Halves round away from zero; an all-zero block has scale 0.
        let halves: Vec<f32> = (0..32).map(|i| if i == 0 { 254.0 } else { 3.0 }).collect();
        assert_eq!(quantize_q8_0(&halves)[3] as i8, 2);
        let zeros = quantize_q8_0(&[0.0; 32]);
        assert!(zeros.iter().all(|&b| b == 0));
    }

    #[test]
    fn f16_tied_model_has_no_output_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small_config();
        config.tie_word_embeddings = true;
        let mut weights = random_weights(&config, 9);
        // A tied HF folder may still list lm_head; it is not written.
        let embed = weights.get("model.embed_tokens.weight").unwrap().clone();
        weights.insert("lm_head.weight", embed);
        let path = write(dir.path(), &config, &weights, GgufTensorType::F16, &[]);
        let types = tensor_types(&path);
        assert!(!types.contains_key("output.weight"));
        assert_eq!(types["blk.0.ffn_down.weight"], quant::GGML_F16);
        let back = load_gguf(&path).unwrap();
        assert!(back.config.tie_word_embeddings);
        assert!(!back.weights.contains("lm_head.weight"));
        let embed_back = back.weights.get("model.embed_tokens.weight").unwrap();
        let want = weights.get("model.embed_tokens.weight").unwrap();
        for (a, b) in want.data.iter().zip(&embed_back.data) {
            assert_eq!(f16::from_f32(*a).to_f32(), *b);
        }
    }

    #[test]
    fn llama3_rope_scaling_travels_as_rope_freqs() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small_config();
        config.head_dim = 64;
        config.num_attention_heads = 1;
        config.num_key_value_heads = 1;
        config.max_position_embeddings = 131072;
        config.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let weights = random_weights(&config, 10);
        let path = write(dir.path(), &config, &weights, GgufTensorType::F32, &[]);
        assert_eq!(tensor_types(&path)["rope_freqs.weight"], quant::GGML_F32);
        let back = load_gguf(&path).unwrap();
        assert_eq!(back.config, config);
    }

    #[test]
    fn names_and_qk_permutation_invert_the_readers() {
        for name in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.12.post_attention_layernorm.weight",
        ] {
            let gguf = gguf_tensor_name(name).unwrap();
            assert_eq!(hf_tensor_name(&gguf).as_deref(), Some(name));
        }
        assert_eq!(
            gguf_tensor_name("model.layers.1.self_attn.k_proj.weight").as_deref(),
            Some("blk.1.attn_k.weight")
        );
        assert!(gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
        // One head of four rows: llama.cpp stores HF rows 0, 2, 1, 3.
        let hf: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let gguf = permute_qk_rows(&hf, 1, 4, 2);
        assert_eq!(gguf, [0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
        let hf: Vec<f32> = (0..3 * 64 * 5).map(|i| i as f32).collect();
        assert_eq!(
            unpermute_qk_rows(&permute_qk_rows(&hf, 3, 64, 5), 3, 64, 5),
            hf
        );
    }

    #[test]
    fn tensors_that_do_not_fit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let export = |weights: &WeightMap| {
            let e = GgufExport {
                name: "x",
                config: &config,
                weights,
                tensor_type: GgufTensorType::F32,
                tokenizer: &[],
            };
            write_gguf(&dir.path().join("x.gguf"), &e)
                .err()
                .unwrap()
                .to_string()
        };
        let mut weights = random_weights(&config, 1);
        weights.insert(
            "model.layers.0.self_attn.q_proj.bias",
            HostTensor::new(vec![64], vec![0.0; 64]),
        );
        assert!(export(&weights).contains("`model.layers.0.self_attn.q_proj.bias` has no place"));
        let mut weights = random_weights(&config, 1);
        weights.take("model.norm.weight", &[64]).unwrap();
        assert!(export(&weights).contains("missing tensor `model.norm.weight`"));
        let mut weights = random_weights(&config, 1);
        weights.insert(
            "model.layers.1.self_attn.k_proj.weight",
            HostTensor::new(vec![64, 64], vec![0.0; 64 * 64]),
        );
        assert!(export(&weights).contains("k_proj.weight` has shape [64, 64], expected [32, 64]"));
        assert!(!dir.path().join("x.gguf").exists());
    }

    #[test]
    fn hf_tokenizer_round_trips_through_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = TextTokenizer::init_model_default();
        tokenizer.save_hf(dir.path()).unwrap();
        let config = small_config();
        let meta = tokenizer_metadata_from_hf_dir(dir.path(), config.vocab_size).unwrap();
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("tokenizer.ggml.model"),
            Some(GgufValue::Str("gpt2".into()))
        );
        assert_eq!(
            get("tokenizer.ggml.pre"),
            Some(GgufValue::Str("gpt2".into()))
        );
        assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(GgufValue::U32(0)));
        assert_eq!(get("tokenizer.ggml.eos_token_id"), Some(GgufValue::U32(2)));
        assert_eq!(
            get("tokenizer.ggml.padding_token_id"),
            Some(GgufValue::U32(0))
        );
        assert_eq!(
            get("tokenizer.ggml.add_bos_token"),
            Some(GgufValue::Bool(false))
        );
        let Some(GgufValue::Strs(tokens)) = get("tokenizer.ggml.tokens") else {
            panic!("no tokens")
        };
        let Some(GgufValue::I32s(types)) = get("tokenizer.ggml.token_type") else {
            panic!("no token types")
        };
        assert_eq!((tokens.len(), types.len()), (300, 300));
        assert_eq!(
            (tokens[1].as_str(), types[1]),
            ("<|im_start|>", TOKEN_TYPE_CONTROL)
        );
        assert_eq!(
            (tokens[3 + 32].as_str(), types[35]),
            ("Ġ", TOKEN_TYPE_NORMAL)
        );
        assert_eq!(
            (tokens[299].as_str(), types[299]),
            ("[PAD299]", TOKEN_TYPE_UNUSED)
        );
        assert!(
            tokenizer_metadata_from_hf_dir(dir.path(), 100)
                .err()
                .unwrap()
                .to_string()
                .contains("outside the model's vocab_size 100")
        );

        let weights = random_weights(&config, 11);
        let path = write(dir.path(), &config, &weights, GgufTensorType::F32, &meta);
        let parts = load_gguf(&path).unwrap().tokenizer.unwrap();
        let back = TextTokenizer::from_parts(parts);
        assert_eq!((back.bos_id(), back.eos_id()), (Some(0), Some(2)));
        assert_eq!(back.chat_template(), tokenizer.chat_template());
        let text = "<|im_start|>user\nHi, wörld 🦀<|im_end|>";
        assert_eq!(
            back.encode(text, false).unwrap(),
            tokenizer.encode(text, false).unwrap()
        );

        // Written again from the GGUF file, the tokenizer keys are the same.
        let copied = tokenizer_metadata_from_gguf(&path).unwrap();
        let mut sorted = meta.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(copied, sorted);
        let again = load_gguf_bytes(&std::fs::read(&path).unwrap(), "m.gguf").unwrap();
        assert_eq!(again.config, config);
    }

    #[test]
    fn pre_tokenizer_names_follow_the_split() {
        let byte_level = serde_json::json!({"type": "ByteLevel", "use_regex": true});
        let no_regex = serde_json::json!({"type": "ByteLevel", "use_regex": false});
        let digits = serde_json::json!({"type": "Digits", "individual_digits": true});
        let split = serde_json::json!({"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}|\s+"}});
        let seq =
            |a: &Value, b: &Value| serde_json::json!({"type": "Sequence", "pretokenizers": [a, b]});
        assert_eq!(pre_tokenizer_name(&byte_level), Some("gpt2"));
        assert_eq!(
            pre_tokenizer_name(&seq(&digits, &byte_level)),
            Some("smollm")
        );
        assert_eq!(
            pre_tokenizer_name(&seq(&split, &no_regex)),
            Some("llama-bpe")
        );
        assert_eq!(pre_tokenizer_name(&no_regex), None);
        assert_eq!(
            pre_tokenizer_name(&serde_json::json!({"type": "Metaspace"})),
            None
        );
    }
}
