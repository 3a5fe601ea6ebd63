//! `WeightMap`: named f32 tensors on the host, the meeting point of every
//! loader and the model.
//!
//! Loaders (`hf` for safetensors folders, `gguf` for llama.cpp files) decode
//! whatever is on disk into HF-named, HF-layout f32 tensors here; `llama`
//! takes them out by name and checks each shape. Nothing here knows about
//! burn devices or file formats.

use std::collections::BTreeMap;

use super::ModelError;

/// A dense row-major f32 tensor held in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

/// HF-named tensors from one model source (a folder, a GGUF file, memory).
#[derive(Debug, Default)]
pub struct WeightMap {
    /// Names the source in errors: a path, usually.
    pub source: String,
    tensors: BTreeMap<String, HostTensor>,
}

impl WeightMap {
    pub fn new(source: impl Into<String>) -> WeightMap {
        WeightMap {
            source: source.into(),
            tensors: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.tensors.insert(name.into(), tensor);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Removes and returns `name`, which must have exactly `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.source.clone(),
                name: name.to_string(),
            })?;
        if tensor.shape != shape {
            return Err(ModelError::TensorShape {
                file: self.source.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: tensor.shape,
            });
        }
        Ok(tensor)
    }
}
