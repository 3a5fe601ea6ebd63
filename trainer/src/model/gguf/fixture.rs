//! Test fixtures: a writer of small GGUF v3 files laid out as llama.cpp
//! writes them, and a tiny Llama in every supported storage type with the
//! HF tensors it must load as. Compiled for tests only.

use std::collections::BTreeMap;

use half::f16;

use super::quant;
use crate::model::HostTensor;

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
pub(super) fn q8_0(values: &[f32], d: f32) -> Vec<u8> {
    values
        .chunks(32)
        .flat_map(|block| {
            let scale = f16::from_f32(d).to_le_bytes().into_iter();
            scale.chain(block.iter().map(|&v| (v / d).round() as i8 as u8))
        })
        .collect()
}

/// Q4_0 (`min = None`, nibbles centred on 8) or Q4_1 blocks of `nibbles`.
pub(super) fn q4(nibbles: &[u8], d: f32, min: Option<f32>) -> Vec<u8> {
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
pub(super) fn permute_like_llama_cpp(
    w: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Vec<f32> {
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

pub(super) fn pattern(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + salt * 13) % 23) as f32 / 4.0 - 2.0)
        .collect()
}

pub(super) const HIDDEN: usize = 32;
pub(super) const HEADS: usize = 4;
pub(super) const KV_HEADS: usize = 2;
pub(super) const HEAD_DIM: usize = 8;
pub(super) const FFN: usize = 64;
pub(super) const VOCAB: usize = 16;

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
