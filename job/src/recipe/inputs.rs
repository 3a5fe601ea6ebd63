//! A job spec turned into what the trainer runs: the model source, the
//! tokenized datasets, the sampler and the optimisation settings, loaded and
//! checked. Not here: joining ranks, checkpoints, the loop (`recipe`).

use std::path::PathBuf;

use trainer::data::{DataOptions, DataSource, DatasetConfig, Datasets, Sampler};
use trainer::device::{ComputeBackend, FrozenDType};
use trainer::lora::{LoraConfig, TargetModule};
use trainer::model::ModelSource;
use trainer::train::TrainConfig;
use trainer::train::grad::Activations;
use trainer::train::optim::AdamWConfig;

use super::RecipeError;
use crate::JobSpec;
use crate::spec::{ModelDType, ModelSpec, PathOrUrl, TrainingLength, Validation, Warmup};

/// Everything a run of a spec needs before its ranks meet.
pub struct JobInputs {
    pub spec: JobSpec,
    /// The base model, read but not yet built on a device.
    pub source: ModelSource,
    pub plan: RunPlan,
}

/// What the loop trains on and how, read from the spec.
pub struct RunPlan {
    pub data: Datasets,
    pub sampler: Sampler,
    pub lora: LoraConfig,
    pub train: TrainConfig,
    /// Where the final adapter and state go.
    pub output_dir: PathBuf,
    /// How the base model is named in `adapter_config.json`.
    pub base_model: String,
}

/// The precision `model.dtype` asks for the frozen base weights (`None`:
/// the device's default).
pub fn frozen_dtype(spec: &JobSpec) -> Option<FrozenDType> {
    spec.model_dtype.map(|d| match d {
        ModelDType::F32 => FrozenDType::F32,
        ModelDType::Bf16 => FrozenDType::Bf16,
        ModelDType::F16 => FrozenDType::F16,
    })
}

/// The base model `spec` names, loaded (a preset is made from the seed),
/// and how `adapter_config.json` names it. With a 16-bit `model.dtype`
/// each matrix is narrowed as it is read or drawn, and the model keeps
/// them so on any device.
pub fn model_source(spec: &JobSpec) -> Result<(ModelSource, String), RecipeError> {
    let dtype = frozen_dtype(spec);
    Ok(match &spec.model {
        ModelSpec::Preset(preset) => (
            ModelSource::random_as(*preset, spec.training.seed, dtype),
            format!("preset:{}", preset.name()),
        ),
        ModelSpec::Path(PathOrUrl::Path(p)) => (
            ModelSource::open_as(p, dtype).map_err(|e| {
                RecipeError::context(format!("cannot load model {}", p.display()), e)
            })?,
            p.display().to_string(),
        ),
        ModelSpec::Path(PathOrUrl::Url(url)) => {
            return Err(RecipeError::Input(format!(
                "model.path: {url}: models are read from local paths for now; download it first"
            )));
        }
    })
}

/// The tensor backend `resources.backend` names.
pub fn compute_backend(spec: &JobSpec) -> Result<ComputeBackend, RecipeError> {
    Ok(ComputeBackend::try_from(spec.resources.backend)?)
}

impl JobInputs {
    /// Loads the model and the datasets of `spec`.
    pub fn load(spec: JobSpec) -> Result<JobInputs, RecipeError> {
        let seed = spec.training.seed;
        let (source, base_model) = model_source(&spec)?;
        let Some(tokenizer) = &source.tokenizer else {
            return Err(RecipeError::Input(format!(
                "{base_model}: the model has no tokenizer, so its dataset cannot be tokenized"
            )));
        };

        let location = |p: &PathOrUrl| DataSource::parse(&p.to_string());
        let ds = &spec.dataset;
        let options = DataOptions {
            format: ds.format.into(),
            max_seq_len: ds.max_seq_len as usize,
            packing: ds.packing,
            train_on_inputs: ds.train_on_inputs,
        };
        let validation = match &ds.validation {
            None => trainer::data::Validation::None,
            Some(Validation::Data(p)) => trainer::data::Validation::Source(location(p)?),
            Some(Validation::Fraction(f)) => trainer::data::Validation::Fraction(*f),
        };
        let config = DatasetConfig {
            train: location(&ds.train)?,
            validation,
            options,
            seed,
        };
        let data = trainer::data::load_datasets(&config, tokenizer)?;

        let t = &spec.training;
        let sampler = Sampler::new(data.train.len(), t.global_batch_size as usize, seed)?;
        let max_steps = match t.length {
            TrainingLength::MaxSteps(n) => n as usize,
            TrainingLength::Epochs(e) => e as usize * sampler.steps_per_epoch() as usize,
        };
        let warmup_steps = match t.warmup {
            Warmup::Steps(n) => n as usize,
            Warmup::Ratio(r) => (r * max_steps as f64).ceil() as usize,
        };
        let targets: Vec<TargetModule> = spec
            .lora
            .target_modules
            .modules()
            .into_iter()
            .map(TargetModule::from)
            .collect();
        let mut lora = LoraConfig::new(spec.lora.r as usize, spec.lora.alpha, &targets);
        lora.dropout = spec.lora.dropout;
        lora.use_rslora = spec.lora.use_rslora;
        let train = TrainConfig {
            max_steps,
            learning_rate: t.learning_rate,
            schedule: t.schedule.into(),
            warmup_steps,
            adam: AdamWConfig {
                beta1: t.adam_beta1,
                beta2: t.adam_beta2,
                eps: t.adam_epsilon,
                weight_decay: t.weight_decay,
            },
            max_grad_norm: t.max_grad_norm,
            eval_every: t.eval_every as usize,
            seed,
            sync_check_every: TrainConfig::DEFAULT_SYNC_CHECK_EVERY,
            activations: if t.gradient_checkpointing {
                Activations::Recomputed
            } else {
                Activations::Kept
            },
        };
        let output_dir = match &spec.output.dir {
            Some(PathOrUrl::Path(p)) => p.clone(),
            Some(PathOrUrl::Url(url)) => {
                return Err(RecipeError::Input(format!(
                    "output.dir: {url}: the final adapter is written to a local folder; object storage is for checkpoint.storage"
                )));
            }
            None => match &spec.checkpoint.storage {
                PathOrUrl::Path(p) => p.join(&spec.name).join("final"),
                PathOrUrl::Url(_) => PathBuf::from("runs").join(&spec.name).join("final"),
            },
        };
        Ok(JobInputs {
            spec,
            source,
            plan: RunPlan {
                data,
                sampler,
                lora,
                train,
                output_dir,
                base_model,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use burn::tensor::DType;
    use trainer::collective::Solo;
    use trainer::train::fused::CpuWeights;

    use super::*;
    use crate::recipe::{Discard, JobRun, RunIdentity};

    /// Trains the tiny preset for three steps with `dtype` and returns the
    /// run (its model and its log).
    fn run(dir: &std::path::Path, dtype: &str) -> JobRun {
        run_with(dir, dtype, "")
    }

    /// [`run`] with `training` keys added to the spec's `training:` map
    /// (each with a leading `, `).
    fn run_with(dir: &std::path::Path, dtype: &str, training: &str) -> JobRun {
        let data = dir.join("train.jsonl");
        let lines: String = (0..16)
            .map(|i| format!("{{\"text\": \"sample {i}: the quick brown fox jumps over the lazy dog {i}\"}}\n"))
            .collect();
        std::fs::write(&data, lines).unwrap();
        let yaml = format!(
            "name: half-{dtype}\nmodel: {{preset: tiny, dtype: {dtype}}}\n\
             dataset: {{train: train.jsonl, max_seq_len: 32}}\n\
             lora: {{r: 4, target_modules: all-linear}}\n\
             training: {{max_steps: 3, micro_batch_size: 2, learning_rate: 1.0e-3{training}}}\n\
             checkpoint: {{every_steps: 0, storage: runs-{dtype}}}\n"
        );
        let spec = JobSpec::from_yaml(&yaml, "job.yaml", dir).unwrap();
        let device = trainer::device::device_for(ComputeBackend::Cpu)
            .unwrap()
            .autodiff();
        let identity = RunIdentity::new(&spec, None, None, None, false).unwrap();
        let inputs = JobInputs::load(spec).unwrap();
        let mut run = JobRun::start(
            inputs,
            Box::new(Solo),
            &device,
            &identity,
            Arc::new(Discard),
        )
        .unwrap();
        run.train(&device, None, &|| false).unwrap();
        run
    }

    #[test]
    fn a_job_with_bf16_base_weights_keeps_them_in_bf16_and_trains_like_f32() {
        let dir = tempfile::tempdir().unwrap();
        let narrow = run(dir.path(), "bf16");
        let m = &narrow.model;
        let attn = &m.layers[0].self_attn;
        assert_eq!(attn.q_proj.weight.val().dtype(), DType::BF16);
        assert_eq!(m.layers[1].mlp.down_proj.weight.val().dtype(), DType::BF16);
        assert_eq!(m.embed_tokens.val().dtype(), DType::BF16);
        assert_eq!(m.lm_head.val().dtype(), DType::BF16);
        // Norm weights stay f32, and the fused CPU step takes the model.
        assert_eq!(m.norm.weight.val().dtype(), DType::F32);
        assert!(CpuWeights::of(m).is_some());
        assert_eq!(narrow.state.step, 3);

        let wide = run(dir.path(), "f32");
        assert_eq!(
            wide.model.layers[0].self_attn.q_proj.weight.val().dtype(),
            DType::F32
        );
        // The same draws, rounded to bf16 (8 significant bits, relative
        // error ≤ 2⁻⁹ per weight): the losses agree to well under 1%.
        for (a, b) in narrow.state.log.iter().zip(&wide.state.log) {
            assert!(a.loss.is_finite() && a.grad_norm.is_finite());
            let diff = (a.loss - b.loss).abs() / b.loss;
            assert!(diff < 1e-2, "step {}: {} vs {}", a.step, a.loss, b.loss);
        }
        assert_eq!(narrow.state.log.len(), 3);
    }

    #[test]
    fn a_job_with_gradient_checkpointing_recomputes_and_trains_the_same_run() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let recomputed = run_with(one.path(), "f32", ", gradient_checkpointing: true");
        assert_eq!(recomputed.plan.train.activations, Activations::Recomputed);
        let kept = run(two.path(), "f32");
        assert_eq!(kept.plan.train.activations, Activations::Kept);
        let losses = |r: &JobRun| {
            r.state
                .log
                .iter()
                .map(|m| m.loss.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(recomputed.state.log.len(), 3);
        assert_eq!(losses(&recomputed), losses(&kept));
        assert_eq!(recomputed.state.lora, kept.state.lora);
    }
}
