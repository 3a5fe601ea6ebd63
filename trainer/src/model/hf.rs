//! Hugging Face model folders: `config.json` plus `model.safetensors` or a
//! sharded `model.safetensors.index.json`.
//!
//! Reading decodes F32, F16 and BF16 tensors to f32 into a [`WeightMap`],
//! or, for a map of 16-bit frozen weights ([`read_weights_as`]), each
//! matrix straight to that type (a tensor already in it is copied as is);
//! writing stores a `WeightMap` as one F32 `model.safetensors`. Files are
//! memory-mapped, so a shard is never held in memory twice. Not here: the
//! tokenizer files (`crate::tokenizer`) or building the model (`llama`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::weights::StoredTensor;
use super::{HostTensor, LlamaConfig, ModelError, WeightMap};
use crate::device::FrozenDType;

/// Reads `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<LlamaConfig, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    LlamaConfig::from_hf_json(&text, &path.display().to_string())
}

/// Reads every tensor of the folder's safetensors file(s), as f32.
pub fn read_weights(dir: &Path) -> Result<WeightMap, ModelError> {
    read_weights_as(dir, None)
}

/// Reads every tensor of the folder's safetensors file(s) into a map for
/// frozen matrices in `dtype` ([`WeightMap::with_dtype`]): with a 16-bit
/// type, each matrix is converted as it is read.
pub fn read_weights_as(dir: &Path, dtype: Option<FrozenDType>) -> Result<WeightMap, ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut weights = WeightMap::with_dtype(dir.display().to_string(), dtype);
    if index.exists() {
        for shard in shard_files(&index)? {
            read_file_into(&dir.join(&shard), &mut weights)?;
        }
    } else if single.exists() {
        read_file_into(&single, &mut weights)?;
    } else {
        return Err(ModelError::Format {
            file: dir.display().to_string(),
            message: "no model.safetensors or model.safetensors.index.json in this folder".into(),
        });
    }
    Ok(weights)
}

/// The distinct shard file names listed in an index's `weight_map`.
fn shard_files(index: &Path) -> Result<BTreeSet<String>, ModelError> {
    let file = index.display().to_string();
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        file: file.clone(),
        message: format!("not JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::Format {
            file: file.clone(),
            message: "missing object `weight_map`".into(),
        })?;
    map.values()
        .map(|f| {
            f.as_str()
                .filter(|s| !s.contains('/') && !s.contains('\\'))
                .map(str::to_string)
                .ok_or_else(|| ModelError::Format {
                    file: file.clone(),
                    message: format!("weight_map entry {f} is not a plain file name"),
                })
        })
        .collect()
}

/// Reads one safetensors file, as f32.
pub fn read_safetensors_file(path: &Path) -> Result<WeightMap, ModelError> {
    let mut weights = WeightMap::new(path.display().to_string());
    read_file_into(path, &mut weights)?;
    Ok(weights)
}

fn read_file_into(path: &Path, weights: &mut WeightMap) -> Result<(), ModelError> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns;
    // a model file changed underneath a running load is not supported.
    let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Format {
        file: name.clone(),
        message: format!("not a valid safetensors file (truncated or corrupt?): {e}"),
    })?;
    let wanted = weights.dtype().filter(|d| d.is_half());
    for (tname, view) in st.tensors() {
        let bytes = view.data();
        let shape = view.shape().to_vec();
        if shape.len() >= 2 {
            match (view.dtype(), wanted) {
                (Dtype::BF16, Some(FrozenDType::Bf16)) => {
                    let data = bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    weights.insert_stored(tname, StoredTensor::Bf16 { shape, data });
                    continue;
                }
                (Dtype::F16, Some(FrozenDType::F16)) => {
                    let data = bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    weights.insert_stored(tname, StoredTensor::F16 { shape, data });
                    continue;
                }
                _ => {}
            }
        }
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    file: name,
                    name: tname,
                    dtype: format!("{other:?} (supported: F32, F16, BF16)"),
                });
            }
        };
        weights.insert(tname, HostTensor::new(shape, data));
    }
    Ok(())
}

/// Writes `tensors` as an F32 safetensors file at `path`.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), ModelError> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name.to_string(), t.shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("shape and byte length agree");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| ModelError::Format {
        file: path.display().to_string(),
        message: format!("cannot write safetensors: {e}"),
    })
}

/// Writes `config.json` and `model.safetensors` for `config` and `weights` into `dir`.
pub fn write_model(
    dir: &Path,
    config: &LlamaConfig,
    weights: &WeightMap,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config.to_hf_json()).expect("config serializes");
    std::fs::write(&cfg_path, text).map_err(|e| ModelError::io(&cfg_path, e))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(
        &dir.join("model.safetensors"),
        weights
            .names()
            .map(|n| (n, weights.get(n).expect("listed"))),
        Some(metadata),
    )
}
