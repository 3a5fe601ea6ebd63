//! `POST /v1/fine_tuning/jobs`: the request body, checked field by field
//! (errors name the field as OpenAI's `param`), and the job spec it
//! becomes.
//!
//! OpenAI's fields map onto the spec: `model` → a catalogue entry's
//! `model.path`/`model.preset`; `training_file`/`validation_file` → the
//! files' stored paths; `hyperparameters` (or `method.supervised.
//! hyperparameters`) → `training.epochs`, `training.global_batch_size`
//! and `training.learning_rate` (the multiplier times the catalogue's
//! rate); `seed`; `suffix` → the job's name. lorafleet's own settings go
//! under the extension key `lorafleet`: `lora` (`r`, `alpha`, `dropout`,
//! `target_modules`), `workers`, `max_steps` (instead of epochs),
//! `eval_every` and `checkpoint_every`.
//!
//! Not here: where files are (`files`), submitting (the `Jobs` service).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::super::ApiError;
use crate::server::catalogue::{BaseModel, BaseSource};

/// A create-job request as sent.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateJob {
    pub model: String,
    pub training_file: String,
    #[serde(default)]
    pub validation_file: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
    #[serde(default)]
    pub method: Option<Method>,
    #[serde(default)]
    pub integrations: Option<Vec<Value>>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub lorafleet: Option<Extension>,
}

/// OpenAI's hyperparameters; each may be `"auto"` or absent.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Hyperparameters {
    #[serde(default)]
    pub n_epochs: Option<Auto<u32>>,
    #[serde(default)]
    pub batch_size: Option<Auto<u32>>,
    #[serde(default)]
    pub learning_rate_multiplier: Option<Auto<f64>>,
}

/// A number or the word `auto`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub(super) enum Auto<T> {
    Value(T),
    Word(AutoWord),
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum AutoWord {
    Auto,
}

impl<T: Copy> Auto<T> {
    fn or(value: Option<Auto<T>>, default: T) -> T {
        match value {
            Some(Auto::Value(value)) => value,
            _ => default,
        }
    }
}

/// `method`: only supervised fine-tuning.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Method {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub supervised: Option<Supervised>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Supervised {
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
}

/// lorafleet's own settings (`lorafleet` in the request).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Extension {
    #[serde(default)]
    pub lora: Option<LoraExtension>,
    #[serde(default)]
    pub workers: Option<u32>,
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default)]
    pub eval_every: Option<u64>,
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoraExtension {
    #[serde(default)]
    pub r: Option<u32>,
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub dropout: Option<f64>,
    /// A list of module names, or `all-linear`.
    #[serde(default)]
    pub target_modules: Option<Value>,
}

/// What the spec is built from besides the request.
pub(super) struct JobPlace<'a> {
    pub base: &'a BaseModel,
    pub training_path: &'a str,
    pub validation_path: Option<&'a str>,
    /// Where its checkpoints go (a folder or URL prefix).
    pub checkpoint_storage: &'a str,
}

/// The hyperparameters a job runs with, all resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Resolved {
    pub n_epochs: u32,
    pub batch_size: u32,
    pub learning_rate_multiplier: f64,
    pub seed: u64,
}

impl CreateJob {
    /// Parses a request body; a wrong field is named as OpenAI's `param`.
    pub fn parse(body: &[u8]) -> Result<CreateJob, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
        let Value::Object(fields) = &value else {
            return Err(ApiError::invalid("the body must be a JSON object"));
        };
        for required in ["model", "training_file"] {
            if !fields.contains_key(required) {
                return Err(
                    ApiError::invalid(format!("missing required parameter: '{required}'"))
                        .param(required)
                        .code("missing_required_parameter"),
                );
            }
        }
        serde_json::from_value(value.clone()).map_err(|e| {
            let message = e.to_string();
            let param = message
                .split('`')
                .nth(1)
                .filter(|_| message.starts_with("unknown field"))
                .map(str::to_string);
            let error = ApiError::invalid(format!("invalid request: {message}"));
            match param {
                Some(param) => error.param(param),
                None => error,
            }
        })
    }

    /// The hyperparameters given, `method`'s taking precedence.
    fn hyperparameters(&self) -> Result<Hyperparameters, ApiError> {
        if let Some(method) = &self.method {
            if method.kind != "supervised" {
                return Err(ApiError::invalid(format!(
                    "method.type {:?}: lorafleet fine-tunes with supervised LoRA only",
                    method.kind
                ))
                .param("method.type"));
            }
            if let Some(h) = method
                .supervised
                .as_ref()
                .and_then(|s| s.hyperparameters.clone())
            {
                return Ok(h);
            }
        }
        Ok(self.hyperparameters.clone().unwrap_or_default())
    }

    /// The hyperparameters with the catalogue's defaults filled in.
    pub fn resolve(&self, base: &BaseModel) -> Result<Resolved, ApiError> {
        if self.integrations.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(
                ApiError::invalid("integrations are not supported by lorafleet")
                    .param("integrations"),
            );
        }
        let h = self.hyperparameters()?;
        let resolved = Resolved {
            n_epochs: Auto::or(h.n_epochs, base.n_epochs),
            batch_size: Auto::or(h.batch_size, base.batch_size),
            learning_rate_multiplier: Auto::or(h.learning_rate_multiplier, 1.0),
            seed: self.seed.unwrap_or(job::spec::defaults::SEED),
        };
        if resolved.n_epochs == 0 {
            return Err(
                ApiError::invalid("n_epochs must be at least 1").param("hyperparameters.n_epochs")
            );
        }
        if resolved.batch_size == 0 {
            return Err(ApiError::invalid("batch_size must be at least 1")
                .param("hyperparameters.batch_size"));
        }
        let m = resolved.learning_rate_multiplier;
        if !(m.is_finite() && m > 0.0) {
            return Err(
                ApiError::invalid("learning_rate_multiplier must be a positive number")
                    .param("hyperparameters.learning_rate_multiplier"),
            );
        }
        if let Some(suffix) = &self.suffix
            && (suffix.is_empty()
                || suffix.len() > 64
                || !suffix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(ApiError::invalid(
                "suffix: 1 to 64 characters of letters, digits, '-' and '_'",
            )
            .param("suffix"));
        }
        Ok(resolved)
    }

    /// The job spec (as a JSON value, which is YAML) for this request.
    pub fn spec(&self, resolved: &Resolved, place: &JobPlace<'_>) -> Result<Value, ApiError> {
        let ext = self.lorafleet.clone().unwrap_or_default();
        let workers = ext.workers.unwrap_or(1);
        if workers == 0 {
            return Err(ApiError::invalid("lorafleet.workers must be at least 1")
                .param("lorafleet.workers"));
        }
        if !resolved.batch_size.is_multiple_of(workers) {
            return Err(ApiError::invalid(format!(
                "batch_size {} cannot be split evenly over {workers} workers",
                resolved.batch_size
            ))
            .param("hyperparameters.batch_size"));
        }
        let model = match &place.base.source {
            BaseSource::Preset(name) => json!({ "preset": name }),
            BaseSource::Path(path) => json!({ "path": path }),
        };
        let name = match &self.suffix {
            Some(suffix) => format!("{}:{suffix}", self.model),
            None => format!("{}:fine-tune", self.model),
        };
        let mut dataset = json!({
            "train": place.training_path,
            "format": "auto",
            "max_seq_len": place.base.max_seq_len,
        });
        if let Some(validation) = place.validation_path {
            dataset["validation"] = json!(validation);
        }
        let lora = ext.lora.unwrap_or_default();
        let mut lora_spec = json!({
            "r": lora.r.unwrap_or(job::spec::defaults::R),
            "alpha": lora.alpha.unwrap_or(job::spec::defaults::ALPHA),
            "dropout": lora.dropout.unwrap_or(job::spec::defaults::DROPOUT),
        });
        if let Some(targets) = lora.target_modules {
            lora_spec["target_modules"] = targets;
        }
        let mut training = json!({
            "global_batch_size": resolved.batch_size,
            "micro_batch_size": resolved.batch_size / workers,
            "learning_rate": place.base.learning_rate * resolved.learning_rate_multiplier,
            "schedule": "linear",
            "seed": resolved.seed,
        });
        match ext.max_steps {
            Some(steps) => training["max_steps"] = json!(steps),
            None => training["epochs"] = json!(resolved.n_epochs),
        }
        if let Some(every) = ext.eval_every {
            training["eval_every"] = json!(every);
        } else if place.validation_path.is_some() {
            training["eval_every"] = json!(10);
        }
        let mut checkpoint = json!({
            "storage": place.checkpoint_storage,
            "keep_last": 3,
        });
        if let Some(every) = ext.checkpoint_every {
            checkpoint["every_steps"] = json!(every);
        }
        Ok(json!({
            "name": name,
            "model": model,
            "dataset": dataset,
            "lora": lora_spec,
            "training": training,
            "resources": { "workers": workers, "backend": "cpu" },
            "checkpoint": checkpoint,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::catalogue::Catalogue;
    use job::spec::{JobSpec, TrainingLength};

    fn build(body: Value) -> Result<JobSpec, ApiError> {
        let request = CreateJob::parse(body.to_string().as_bytes())?;
        let catalogue = Catalogue::presets();
        let base = catalogue.get(&request.model).unwrap();
        let resolved = request.resolve(base)?;
        let place = JobPlace {
            base,
            training_path: "/data/t.jsonl",
            validation_path: Some("/data/v.jsonl"),
            checkpoint_storage: "/data/checkpoints",
        };
        let spec = request.spec(&resolved, &place)?;
        let yaml = serde_saphyr::to_string(&spec).unwrap();
        Ok(JobSpec::from_yaml(&yaml, "request", std::path::Path::new("/")).unwrap())
    }

    #[test]
    fn openai_fields_become_the_spec() {
        let spec = build(json!({
            "model": "tiny", "training_file": "file-1", "suffix": "mine", "seed": 7,
            "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5},
            "lorafleet": {"lora": {"r": 4, "target_modules": "all-linear"}, "workers": 2}
        }))
        .unwrap();
        assert_eq!(spec.name, "tiny:mine");
        assert_eq!(spec.training.length, TrainingLength::Epochs(2));
        assert_eq!(spec.training.global_batch_size, 8);
        assert_eq!(spec.training.micro_batch_size, 4);
        assert_eq!(spec.training.learning_rate, 2.0e-3 * 0.5);
        assert_eq!(spec.training.seed, 7);
        assert_eq!(spec.lora.r, 4);
        assert_eq!(spec.resources.workers.max, 2);
        assert_eq!(spec.dataset.train.to_string(), "/data/t.jsonl");
    }

    #[test]
    fn method_hyperparameters_win_and_auto_takes_the_catalogues() {
        let spec = build(json!({
            "model": "tiny", "training_file": "file-1",
            "hyperparameters": {"n_epochs": 9},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto", "batch_size": 4}}},
            "lorafleet": {"max_steps": 5}
        }))
        .unwrap();
        assert_eq!(spec.training.length, TrainingLength::MaxSteps(5));
        assert_eq!(spec.training.global_batch_size, 4);
        assert_eq!(spec.training.learning_rate, 2.0e-3);
    }

    #[test]
    fn wrong_fields_are_named() {
        let param = |body: Value| build(body).unwrap_err().param;
        assert_eq!(
            param(json!({"training_file": "f"})).as_deref(),
            Some("model")
        );
        assert_eq!(
            param(json!({"model": "tiny", "training_file": "f", "epochs": 3})).as_deref(),
            Some("epochs")
        );
        assert_eq!(
            param(json!({"model": "tiny", "training_file": "f", "method": {"type": "dpo"}}))
                .as_deref(),
            Some("method.type")
        );
        assert_eq!(
            param(json!({"model": "tiny", "training_file": "f",
                "hyperparameters": {"batch_size": 5}, "lorafleet": {"workers": 2}}))
            .as_deref(),
            Some("hyperparameters.batch_size")
        );
        assert_eq!(
            param(json!({"model": "tiny", "training_file": "f", "suffix": "a b"})).as_deref(),
            Some("suffix")
        );
    }
}
