//! The Llama decoder in Hugging Face layout and naming, and its loaders.
//!
//! [`LlamaConfig`] describes a model; [`WeightMap`] holds its named tensors on
//! the host; [`Llama`] is the burn module built from both. Loaders for a HF
//! folder ([`hf`]) and a llama.cpp GGUF file ([`gguf`]) produce the same
//! `WeightMap`, so the model never knows where its weights came from.
//! Not here: tokenization (`crate::tokenizer`), sampling (`crate::generate`),
//! LoRA.

pub mod config;
pub mod gguf;
pub mod hf;
pub mod init;
pub mod llama;
pub mod rope;
pub mod weights;

use std::path::Path;

pub use config::{LlamaConfig, Preset, RopeScaling};
pub use llama::{KvCache, Llama};
pub use weights::{HostTensor, StoredTensor, WeightMap};

use crate::device::FrozenDType;
use crate::tokenizer::TextTokenizer;

/// A model read from disk, before it is put on a device.
pub struct ModelSource {
    pub config: LlamaConfig,
    pub weights: WeightMap,
    /// `None` when the source has no tokenizer (token-id prompts still work).
    pub tokenizer: Option<TextTokenizer>,
}

impl ModelSource {
    /// Reads a HF model folder or a `.gguf` file.
    pub fn open(path: &Path) -> Result<ModelSource, ModelError> {
        ModelSource::open_as(path, None)
    }

    /// [`ModelSource::open`] for a model whose frozen matrices are kept in
    /// `dtype` (`None`: the device's default, [`crate::device::frozen_dtype`]).
    /// From a HF folder each matrix is converted as it is read, so a 16-bit
    /// model never exists in f32 as a whole; a GGUF file is decoded to f32
    /// first, then narrowed one tensor at a time.
    pub fn open_as(path: &Path, dtype: Option<FrozenDType>) -> Result<ModelSource, ModelError> {
        if path.is_dir() {
            let config = hf::read_config(path)?;
            let weights = hf::read_weights_as(path, dtype)?;
            let tokenizer = if path.join("tokenizer.json").exists() {
                Some(
                    TextTokenizer::from_hf_dir(path).map_err(|e| ModelError::Format {
                        file: path.join("tokenizer.json").display().to_string(),
                        message: e.to_string(),
                    })?,
                )
            } else {
                None
            };
            Ok(ModelSource {
                config,
                weights,
                tokenizer,
            })
        } else if path.extension().is_some_and(|e| e == "gguf") {
            let mut g = gguf::load_gguf(path)?;
            g.weights.set_dtype(dtype);
            Ok(ModelSource {
                config: g.config,
                weights: g.weights,
                tokenizer: g.tokenizer.map(TextTokenizer::from_parts),
            })
        } else if !path.exists() {
            Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ))
        } else {
            Err(ModelError::Format {
                file: path.display().to_string(),
                message: "expected a Hugging Face model folder or a .gguf file".into(),
            })
        }
    }

    /// A random model of `preset`, with the built-in tokenizer.
    pub fn random(preset: Preset, seed: u64) -> ModelSource {
        ModelSource::random_as(preset, seed, None)
    }

    /// [`ModelSource::random`] for a model whose frozen matrices are kept
    /// in `dtype`: the same values, each matrix narrowed as it is drawn.
    pub fn random_as(preset: Preset, seed: u64, dtype: Option<FrozenDType>) -> ModelSource {
        let config = preset.config();
        let weights = init::random_weights_as(&config, seed, dtype);
        ModelSource {
            config,
            weights,
            tokenizer: Some(TextTokenizer::init_model_default()),
        }
    }

    /// Builds the burn model on `device`, its frozen matrices in the type
    /// the weights were read for ([`WeightMap::dtype`]), or the device's
    /// default ([`crate::device::frozen_dtype_or`]).
    pub fn into_model(
        mut self,
        device: &burn::tensor::Device,
    ) -> Result<(Llama, Option<TextTokenizer>), ModelError> {
        let model = Llama::from_weights(&self.config, &mut self.weights, device)?;
        Ok((model, self.tokenizer))
    }
}

/// Why a model could not be read or built. Every message names its source.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The io error is part of the message, not a separate cause, so that
    /// it is printed once.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        file: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` has unsupported type {dtype}")]
    UnsupportedDtype {
        file: String,
        name: String,
        dtype: String,
    },
    /// The file is not a valid container of its kind (truncated, bad header, ...).
    #[error("{file}: {message}")]
    Format { file: String, message: String },
}

impl ModelError {
    pub fn io(path: impl AsRef<std::path::Path>, error: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.as_ref().display().to_string(),
            error,
        }
    }
}
