//! The GGUF container (versions 2 and 3): header, typed metadata, tensor
//! infos, and each tensor's bytes decoded to f32 through `quant`.
//!
//! Parsing is defensive: every length, count and offset is checked against
//! the bytes that are actually there before anything is allocated or sliced,
//! so a truncated or corrupt file is a `ModelError::Format`, never a panic.
//! Not here: what the tensors and keys mean for a Llama model (`config`,
//! `hf_tensors`).

use std::collections::BTreeMap;

use super::quant;
use crate::model::ModelError;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal GGUF; deeper nesting than this is not sensible.
const MAX_ARRAY_NESTING: usize = 3;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum MetaValue {
    Uint(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub(super) fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Uint(n) => Some(n),
            MetaValue::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    pub(super) fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::Uint(n) => i64::try_from(n).ok(),
            MetaValue::Int(n) => Some(n),
            _ => None,
        }
    }

    /// Floats; an f32 becomes the f64 of its shortest decimal spelling, so
    /// an epsilon stored as f32 `1e-5` reads as `1e-5`, as in `config.json`.
    pub(super) fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => x.to_string().parse().ok(),
            MetaValue::F64(x) => Some(x),
            MetaValue::Uint(n) => Some(n as f64),
            MetaValue::Int(n) => Some(n as f64),
            _ => None,
        }
    }
}

/// Where one tensor's data lies and how it is stored.
#[derive(Debug, Clone)]
pub(super) struct TensorInfo {
    pub(super) name: String,
    /// ggml order: `dims[0]` is the row length (innermost).
    pub(super) dims: Vec<u64>,
    pub(super) elements: u64,
    pub(super) type_id: u32,
    /// Relative to the start of the data section.
    pub(super) offset: u64,
}

/// A parsed header: metadata, tensor infos, and where the data starts.
pub(super) struct GgufFile {
    pub(super) metadata: BTreeMap<String, MetaValue>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) data_start: u64,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    source: &'a str,
}

impl<'a> Reader<'a> {
    fn error(&self, message: String) -> ModelError {
        ModelError::Format {
            file: self.source.to_string(),
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ModelError> {
        if n > self.remaining() as u64 {
            return Err(self.error(format!(
                "file is truncated: {what} at byte {} needs {n} bytes but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u64(what)?;
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    /// Refuses a count of items that could not fit in the bytes left, before
    /// anything is allocated for them.
    fn check_count(&self, count: u64, min_item_bytes: u64, what: &str) -> Result<(), ModelError> {
        if count > self.remaining() as u64 / min_item_bytes {
            return Err(self.error(format!(
                "{what} count {count} cannot fit in the {} bytes left (corrupt or truncated file)",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<MetaValue, ModelError> {
        let what = key;
        Ok(match type_id {
            0 => MetaValue::Uint(u8::from_le_bytes(self.array(what)?).into()),
            1 => MetaValue::Int(i8::from_le_bytes(self.array(what)?).into()),
            2 => MetaValue::Uint(u16::from_le_bytes(self.array(what)?).into()),
            3 => MetaValue::Int(i16::from_le_bytes(self.array(what)?).into()),
            4 => MetaValue::Uint(self.u32(what)?.into()),
            5 => MetaValue::Int(i32::from_le_bytes(self.array(what)?).into()),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                let item_type = self.u32(what)?;
                let count = self.u64(what)?;
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.error(format!(
                        "metadata `{key}` nests arrays deeper than {MAX_ARRAY_NESTING} levels"
                    )));
                }
                let min_item_bytes = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    9 => 12,
                    _ => 8,
                };
                self.check_count(count, min_item_bytes, &format!("metadata `{key}` array"))?;
                let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Uint(self.u64(what)?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.error(format!("metadata `{key}` has unknown value type {other}")));
            }
        })
    }
}

impl GgufFile {
    pub(super) fn parse(bytes: &[u8], source: &str) -> Result<GgufFile, ModelError> {
        let mut r = Reader {
            bytes,
            pos: 0,
            source,
        };
        let magic = r.array::<4>("the magic number")?;
        if &magic != GGUF_MAGIC {
            let hint = if &magic == b"FUGG" {
                " (a big-endian GGUF file, which is not supported)"
            } else {
                ""
            };
            return Err(r.error(format!(
                "not a GGUF file: magic bytes are {magic:02x?}, expected \"GGUF\"{hint}"
            )));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(r.error(format!(
                "GGUF version {version} is not supported (expected 2 or 3)"
            )));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // A key-value pair takes at least 13 bytes, a tensor info 32.
        r.check_count(kv_count, 13, "metadata")?;
        r.check_count(tensor_count, 32, "tensor")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("a metadata key")?;
            let type_id = r.u32(&key)?;
            let value = r.value(type_id, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.error(format!("metadata key `{key}` appears twice")));
            }
        }

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
        for _ in 0..tensor_count {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)?;
            if !(1..=MAX_DIMS).contains(&n_dims) {
                return Err(r.error(format!(
                    "tensor `{name}` has {n_dims} dimensions (expected 1 to {MAX_DIMS})"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<_>, _>>()?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                // No ggml type packs an element in less than a bit.
                .filter(|&n| n <= bytes.len() as u64 * 8)
                .ok_or_else(|| {
                    r.error(format!("tensor `{name}` dimensions {dims:?} are absurd"))
                })?;
            let type_id = r.u32(&name)?;
            let offset = r.u64(&name)?;
            if tensors.iter().any(|t| t.name == name) {
                return Err(r.error(format!("tensor `{name}` appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                elements,
                type_id,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| r.error(format!("general.alignment {v:?} is not a power of two")))?,
        };
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        if let Some(t) = tensors.iter().find(|t| !t.offset.is_multiple_of(alignment)) {
            return Err(r.error(format!(
                "tensor `{}` offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        let gguf = GgufFile {
            metadata,
            tensors,
            data_start,
        };
        // Catch a truncated file now, even in tensors that may never be read;
        // tensors of types without a known size must at least start in it.
        for info in &gguf.tensors {
            match gguf.data_range(info, bytes.len(), source) {
                Ok(_) => {}
                Err(ModelError::UnsupportedDtype { .. })
                    if data_start.saturating_add(info.offset) < bytes.len() as u64 => {}
                Err(ModelError::UnsupportedDtype { .. }) => {
                    return Err(r.error(format!(
                        "file is truncated: tensor `{}` starts at offset {} of the data section, \
                         past the end of the file",
                        info.name, info.offset
                    )));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(gguf)
    }

    pub(super) fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub(super) fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantizes one tensor to f32, in ggml element order.
    /// Dequantizes one tensor to f32, in ggml element order.
    pub(super) fn read_f32(
        &self,
        info: &TensorInfo,
        bytes: &[u8],
        source: &str,
    ) -> Result<Vec<f32>, ModelError> {
        let range = self.data_range(info, bytes.len(), source)?;
        quant::dequantize(info.type_id, &bytes[range]).ok_or_else(|| ModelError::Format {
            file: source.to_string(),
            message: format!("tensor `{}` could not be decoded", info.name),
        })
    }

    /// Where a tensor's data lies in a file of `file_len` bytes, checked.
    fn data_range(
        &self,
        info: &TensorInfo,
        file_len: usize,
        source: &str,
    ) -> Result<std::ops::Range<usize>, ModelError> {
        let format_error = |message: String| ModelError::Format {
            file: source.to_string(),
            message,
        };
        let (block_elems, block_bytes) =
            quant::block_layout(info.type_id).ok_or_else(|| ModelError::UnsupportedDtype {
                file: source.to_string(),
                name: info.name.clone(),
                dtype: format!(
                    "{} (supported: {})",
                    quant::ggml_type_name(info.type_id),
                    quant::SUPPORTED_TYPES
                ),
            })?;
        if !info.dims[0].is_multiple_of(block_elems as u64) {
            return Err(format_error(format!(
                "tensor `{}` rows of {} elements are not whole {} blocks of {block_elems}",
                info.name,
                info.dims[0],
                quant::ggml_type_name(info.type_id)
            )));
        }
        let size = info.elements / block_elems as u64 * block_bytes as u64;
        let start = self.data_start.checked_add(info.offset);
        match (start, start.and_then(|s| s.checked_add(size))) {
            (Some(start), Some(end)) if end <= file_len as u64 => Ok(start as usize..end as usize),
            _ => Err(format_error(format!(
                "file is truncated: tensor `{}` needs {size} bytes at offset {} of the data \
                 section but the file has {file_len} bytes",
                info.name, info.offset
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{GgufWriter, Meta, tiny_llama};
    use super::*;

    fn parse_error(bytes: &[u8]) -> String {
        match GgufFile::parse(bytes, "bad.gguf") {
            Ok(_) => panic!("the file should be refused"),
            Err(e @ ModelError::Format { .. }) => e.to_string(),
            Err(other) => panic!("expected a Format error, got {other}"),
        }
    }

    /// Parses `bytes` and decodes every tensor a supported type stores.
    fn parse_and_read_all(bytes: &[u8]) -> Result<usize, ModelError> {
        let gguf = GgufFile::parse(bytes, "t.gguf")?;
        for info in gguf.tensors.iter().filter(|t| t.type_id != 13) {
            gguf.read_f32(info, bytes, "t.gguf")?;
        }
        Ok(gguf.tensors.len())
    }

    #[test]
    fn reads_typed_metadata_and_tensor_infos() {
        let (mut w, _) = tiny_llama();
        w.version = 2;
        w.alignment = 64;
        w.meta("general.alignment", Meta::U32(64));
        let bytes = w.bytes();
        let gguf = GgufFile::parse(&bytes, "t.gguf").unwrap();
        assert_eq!(gguf.meta_str("general.architecture"), Some("llama"));
        let eps = gguf.meta("llama.attention.layer_norm_rms_epsilon").unwrap();
        assert_eq!(eps.as_f64(), Some(1e-6));
        assert_eq!(gguf.meta("llama.vocab_size").unwrap().as_u64(), Some(16));
        assert_eq!(gguf.data_start % 64, 0);
        let q = gguf.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(
            (q.dims.as_slice(), q.elements, q.type_id),
            (&[32, 32][..], 1024, 1)
        );
        assert_eq!(parse_and_read_all(&bytes).unwrap(), w.tensors.len());
    }

    #[test]
    fn every_truncation_is_a_format_error() {
        let (mut w, _) = tiny_llama();
        // Without the trailing Q5_K tensor, whose size is not known here.
        w.tensors.retain(|t| t.2 != 13);
        let bytes = w.bytes();
        for len in 0..bytes.len() {
            match parse_and_read_all(&bytes[..len]) {
                Err(ModelError::Format { message, .. }) => {
                    assert!(message.contains("truncated"), "at {len}: {message}")
                }
                Err(other) => panic!("at {len}: {other}"),
                Ok(_) => panic!("a file cut at {len} of {} bytes was accepted", bytes.len()),
            }
        }
    }

    #[test]
    fn bad_magic_and_versions_are_named() {
        let (w, _) = tiny_llama();
        let mut bytes = w.bytes();
        bytes[..4].copy_from_slice(b"PK\x03\x04");
        assert_eq!(
            parse_error(&bytes),
            "bad.gguf: not a GGUF file: magic bytes are [50, 4b, 03, 04], expected \"GGUF\""
        );
        bytes[..4].copy_from_slice(b"FUGG");
        assert!(parse_error(&bytes).contains("big-endian"));
        let mut w = GgufWriter::new();
        w.version = 1;
        assert_eq!(
            parse_error(&w.bytes()),
            "bad.gguf: GGUF version 1 is not supported (expected 2 or 3)"
        );
    }

    #[test]
    fn absurd_counts_and_lengths_are_refused_before_allocating() {
        let mut header = b"GGUF".to_vec();
        header.extend(3u32.to_le_bytes());
        let with = |tensors: u64, kvs: u64, rest: &[u8]| {
            let mut b = header.clone();
            b.extend(tensors.to_le_bytes());
            b.extend(kvs.to_le_bytes());
            b.extend(rest);
            b
        };
        let err = parse_error(&with(u64::MAX, 0, &[0; 64]));
        assert!(
            err.contains("tensor count 18446744073709551615 cannot fit"),
            "{err}"
        );
        let err = parse_error(&with(0, 1 << 40, &[0; 64]));
        assert!(err.contains("metadata count"), "{err}");
        // A key whose length is 2^60 bytes.
        let err = parse_error(&with(
            0,
            1,
            &[&(1u64 << 60).to_le_bytes()[..], &[0; 16]].concat(),
        ));
        assert!(err.contains("truncated: a metadata key"), "{err}");
        // An array of 2^50 u32s.
        let mut kv = 1u64.to_le_bytes().to_vec();
        kv.extend(b"k");
        kv.extend(9u32.to_le_bytes());
        kv.extend(4u32.to_le_bytes());
        kv.extend((1u64 << 50).to_le_bytes());
        let err = parse_error(&with(0, 1, &kv));
        assert!(err.contains("metadata `k` array count"), "{err}");
        // An unknown value type.
        let mut kv = 1u64.to_le_bytes().to_vec();
        kv.extend(b"k");
        kv.extend(77u32.to_le_bytes());
        assert!(parse_error(&with(0, 1, &kv)).contains("unknown value type 77"));
    }

    #[test]
    fn bad_tensor_infos_are_refused() {
        let (mut w, _) = tiny_llama();
        w.tensors[0].1 = vec![1 << 40, 1 << 40];
        assert!(
            parse_error(&w.bytes())
                .contains("dimensions [1099511627776, 1099511627776] are absurd")
        );
        let (mut w, _) = tiny_llama();
        w.tensors[0].1 = vec![1, 1, 1, 1, 1];
        assert!(parse_error(&w.bytes()).contains("has 5 dimensions"));
        let (mut w, _) = tiny_llama();
        let first = w.tensors[0].clone();
        w.tensors.push(first);
        assert!(parse_error(&w.bytes()).contains("`token_embd.weight` appears twice"));
        let (mut w, _) = tiny_llama();
        w.meta("general.architecture", Meta::Str("again".into()));
        assert!(parse_error(&w.bytes()).contains("key `general.architecture` appears twice"));
        let (mut w, _) = tiny_llama();
        w.meta("general.alignment", Meta::U32(48));
        assert!(parse_error(&w.bytes()).contains("general.alignment"));
        // A row length that is not whole blocks.
        let (mut w, _) = tiny_llama();
        w.tensor("blk.0.odd.weight", &[16, 1], quant::GGML_Q8_0, vec![0; 34]);
        let bytes = w.bytes();
        let err = parse_and_read_all(&bytes).err().unwrap().to_string();
        assert!(
            err.contains("rows of 16 elements are not whole Q8_0 blocks of 32"),
            "{err}"
        );
    }
}
