//! The base models the OpenAI-compatible API offers: `model` in a job
//! request is a name looked up here, never a path, so a tenant trains only
//! on what the operator put in the catalogue.
//!
//! The operator lists them under `models:` in the coordinator's config
//! file (relative paths start at the file's folder):
//!
//! ```yaml
//! models:
//!   smollm2-135m:
//!     path: /models/SmolLM2-135M-Instruct   # HF folder, .gguf or URL
//!     learning_rate: 2.0e-4   # what learning_rate_multiplier 1 means
//!     max_seq_len: 512        # dataset.max_seq_len of its jobs
//!     batch_size: 8           # when the request says "auto"
//!     n_epochs: 3             # when the request says "auto"
//!   tiny:
//!     preset: tiny            # a random model made on the fly
//! ```
//!
//! Without a config file (the development setup) the catalogue holds the
//! random presets (`trainer::model::Preset::NAMES`). Not here: turning a
//! request into a spec (`http::openai::create`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Where a catalogue model's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum BaseSource {
    /// A random preset (`model.preset`).
    Preset(String),
    /// A folder, `.gguf` file or URL (`model.path`).
    Path(String),
}

/// One catalogue entry and its defaults for jobs on it.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseModel {
    pub source: BaseSource,
    /// The learning rate of `learning_rate_multiplier: 1`.
    pub learning_rate: f64,
    pub max_seq_len: u32,
    /// The global batch size of `batch_size: auto`.
    pub batch_size: u32,
    /// The epochs of `n_epochs: auto`.
    pub n_epochs: u32,
}

/// Base models by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    models: BTreeMap<String, BaseModel>,
}

/// A `models:` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelFile {
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    learning_rate: Option<f64>,
    #[serde(default)]
    max_seq_len: Option<u32>,
    #[serde(default)]
    batch_size: Option<u32>,
    #[serde(default)]
    n_epochs: Option<u32>,
}

impl Catalogue {
    /// The random presets, with the quickstart's settings.
    pub fn presets() -> Catalogue {
        let models = trainer::model::Preset::NAMES
            .iter()
            .map(|name| {
                let model = BaseModel {
                    source: BaseSource::Preset(name.to_string()),
                    learning_rate: 2.0e-3,
                    max_seq_len: 128,
                    batch_size: 16,
                    n_epochs: 3,
                };
                (name.to_string(), model)
            })
            .collect();
        Catalogue { models }
    }

    /// The catalogue of a config file's `models:` (`dir`: the file's folder).
    pub(super) fn from_entries(
        entries: BTreeMap<String, ModelFile>,
        dir: &Path,
    ) -> Result<Catalogue, String> {
        let mut models = BTreeMap::new();
        for (name, entry) in entries {
            let at = |message: &str| format!("models.{name}: {message}");
            let source = match (entry.preset, entry.path) {
                (Some(preset), None) => {
                    if trainer::model::Preset::parse(&preset).is_none() {
                        return Err(at(&format!(
                            "preset {preset:?}: expected one of {}",
                            trainer::model::Preset::NAMES.join(", ")
                        )));
                    }
                    BaseSource::Preset(preset)
                }
                (None, Some(path)) if path.contains("://") || Path::new(&path).is_absolute() => {
                    BaseSource::Path(path)
                }
                (None, Some(path)) => BaseSource::Path(dir.join(path).display().to_string()),
                _ => return Err(at("give exactly one of preset and path")),
            };
            let model = BaseModel {
                source,
                learning_rate: entry.learning_rate.unwrap_or(2.0e-4),
                max_seq_len: entry.max_seq_len.unwrap_or(512),
                batch_size: entry.batch_size.unwrap_or(8),
                n_epochs: entry.n_epochs.unwrap_or(3),
            };
            if !(model.learning_rate.is_finite() && model.learning_rate > 0.0) {
                return Err(at("learning_rate must be a positive number"));
            }
            if model.max_seq_len == 0 || model.batch_size == 0 || model.n_epochs == 0 {
                return Err(at(
                    "max_seq_len, batch_size and n_epochs must be at least 1",
                ));
            }
            models.insert(name, model);
        }
        Ok(Catalogue { models })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&BaseModel> {
        self.models.get(name)
    }

    /// Every model, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BaseModel)> {
        self.models
            .iter()
            .map(|(name, model)| (name.as_str(), model))
    }
}
