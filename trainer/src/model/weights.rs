//! `WeightMap`: named tensors on the host, the meeting point of every
//! loader and the model.
//!
//! Loaders (`hf` for safetensors folders, `gguf` for llama.cpp files) decode
//! whatever is on disk into HF-named, HF-layout f32 tensors here; `llama`
//! takes them out by name and checks each shape. A map made for 16-bit
//! frozen weights ([`WeightMap::with_dtype`]) narrows each matrix as it is
//! inserted, so a model loaded that way never exists in f32 as a whole:
//! its peak is the 16-bit model plus the one tensor being converted.
//! Vectors (norm weights) stay f32. Nothing here knows about burn devices
//! or file formats.

use std::collections::BTreeMap;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::ModelError;
use crate::device::FrozenDType;

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

/// A tensor as a [`WeightMap`] holds it: f32, or narrowed to 16 bits.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredTensor {
    F32(HostTensor),
    Bf16 { shape: Vec<usize>, data: Vec<bf16> },
    F16 { shape: Vec<usize>, data: Vec<f16> },
}

impl StoredTensor {
    /// `t` in `dtype` (rounded to nearest; `F32` keeps it as is).
    pub fn narrowed(t: HostTensor, dtype: FrozenDType) -> StoredTensor {
        match dtype {
            FrozenDType::F32 => StoredTensor::F32(t),
            FrozenDType::Bf16 => {
                let mut data = vec![bf16::ZERO; t.data.len()];
                data.convert_from_f32_slice(&t.data);
                StoredTensor::Bf16 {
                    shape: t.shape,
                    data,
                }
            }
            FrozenDType::F16 => {
                let mut data = vec![f16::ZERO; t.data.len()];
                data.convert_from_f32_slice(&t.data);
                StoredTensor::F16 {
                    shape: t.shape,
                    data,
                }
            }
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            StoredTensor::F32(t) => &t.shape,
            StoredTensor::Bf16 { shape, .. } | StoredTensor::F16 { shape, .. } => shape,
        }
    }

    pub fn dtype(&self) -> FrozenDType {
        match self {
            StoredTensor::F32(_) => FrozenDType::F32,
            StoredTensor::Bf16 { .. } => FrozenDType::Bf16,
            StoredTensor::F16 { .. } => FrozenDType::F16,
        }
    }

    /// The values widened to f32 (exact).
    pub fn into_f32(self) -> HostTensor {
        match self {
            StoredTensor::F32(t) => t,
            StoredTensor::Bf16 { shape, data } => HostTensor::new(shape, data.to_f32_vec()),
            StoredTensor::F16 { shape, data } => HostTensor::new(shape, data.to_f32_vec()),
        }
    }

    /// A 2-D tensor transposed, in the same type.
    pub fn transposed(&self) -> StoredTensor {
        fn flip<T: Copy + Default>(shape: &[usize], data: &[T]) -> (Vec<usize>, Vec<T>) {
            let (rows, cols) = (shape[0], shape[1]);
            let mut out = vec![T::default(); rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
            (vec![cols, rows], out)
        }
        match self {
            StoredTensor::F32(t) => {
                let (shape, data) = flip(&t.shape, &t.data);
                StoredTensor::F32(HostTensor::new(shape, data))
            }
            StoredTensor::Bf16 { shape, data } => {
                let (shape, data) = flip(shape, data);
                StoredTensor::Bf16 { shape, data }
            }
            StoredTensor::F16 { shape, data } => {
                let (shape, data) = flip(shape, data);
                StoredTensor::F16 { shape, data }
            }
        }
    }
}

/// HF-named tensors from one model source (a folder, a GGUF file, memory).
#[derive(Debug, Default)]
pub struct WeightMap {
    /// Names the source in errors: a path, usually.
    pub source: String,
    tensors: BTreeMap<String, StoredTensor>,
    /// The precision asked for the model's frozen matrices, if any.
    dtype: Option<FrozenDType>,
}

impl WeightMap {
    pub fn new(source: impl Into<String>) -> WeightMap {
        WeightMap::with_dtype(source, None)
    }

    /// A map for a model whose frozen matrices are kept in `dtype`: with a
    /// 16-bit type, every matrix inserted is narrowed to it at once.
    /// `None`: f32 here, and the device's default in the model
    /// (`crate::device::frozen_dtype`).
    pub fn with_dtype(source: impl Into<String>, dtype: Option<FrozenDType>) -> WeightMap {
        WeightMap {
            source: source.into(),
            tensors: BTreeMap::new(),
            dtype,
        }
    }

    /// The precision asked for the frozen matrices (`None`: the device's default).
    pub fn dtype(&self) -> Option<FrozenDType> {
        self.dtype
    }

    /// Asks for `dtype` from now on; with a 16-bit type, the matrices
    /// already held are narrowed one at a time.
    pub fn set_dtype(&mut self, dtype: Option<FrozenDType>) {
        self.dtype = dtype;
        let names: Vec<String> = self.tensors.keys().cloned().collect();
        for name in names {
            let t = self.tensors.remove(&name).expect("listed");
            let t = self.stored(t);
            self.tensors.insert(name, t);
        }
    }

    /// `t` as this map keeps it: a matrix narrowed to a 16-bit [`Self::dtype`].
    fn stored(&self, t: StoredTensor) -> StoredTensor {
        match (self.dtype, t) {
            (Some(d), StoredTensor::F32(t)) if d.is_half() && t.shape.len() >= 2 => {
                StoredTensor::narrowed(t, d)
            }
            (_, t) => t,
        }
    }

    /// Inserts `tensor`; a matrix is narrowed to a 16-bit [`Self::dtype`].
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.insert_stored(name, StoredTensor::F32(tensor));
    }

    /// Inserts `tensor`, kept as it is unless it is an f32 matrix and
    /// [`Self::dtype`] is 16-bit.
    pub fn insert_stored(&mut self, name: impl Into<String>, tensor: StoredTensor) {
        let tensor = self.stored(tensor);
        self.tensors.insert(name.into(), tensor);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The f32 tensor `name` (`None` for one kept in 16 bits: see [`Self::get_stored`]).
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        match self.tensors.get(name)? {
            StoredTensor::F32(t) => Some(t),
            _ => None,
        }
    }

    pub fn get_stored(&self, name: &str) -> Option<&StoredTensor> {
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

    /// Removes and returns `name`, which must have exactly `shape`, in f32
    /// (widened when it was kept in 16 bits).
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        Ok(self.take_stored(name, shape)?.into_f32())
    }

    /// Removes and returns `name`, which must have exactly `shape`, as it is kept.
    pub fn take_stored(&mut self, name: &str, shape: &[usize]) -> Result<StoredTensor, ModelError> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.source.clone(),
                name: name.to_string(),
            })?;
        if tensor.shape() != shape {
            return Err(ModelError::TensorShape {
                file: self.source.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: tensor.shape().to_vec(),
            });
        }
        Ok(tensor)
    }
}
