//! Reading the located YAML tree into a [`JobSpec`], collecting every problem.
//!
//! Each section is read against a schema (its keys and accepted
//! aliases); unknown and repeated keys are reported at the key, wrong values
//! at the value, a missing key at the section that should hold it, and a
//! pair of alternatives given together at the second of the two.

use std::path::{Path, PathBuf};

use trainer::model::Preset;

use super::SpecProblem;
use super::reader::{Field, Reader, Scalar, Section, as_u32, as_u64, resolve};
use super::schema::{
    CHECKPOINT, DATASET, LORA, MODEL, OUTPUT, RESOURCES, ROOT, TRAINING, unknown_value,
};
use super::types::{
    Backend, CheckpointSpec, DatasetFormat, DatasetSpec, JobSpec, LoraSpec, ModelDType, ModelSpec,
    OutputSpec, PathOrUrl, ResourcesSpec, Schedule, TargetModule, TargetModules, TrainingLength,
    TrainingSpec, Validation, Warmup, Workers, defaults,
};
use super::yaml::{Kind, Node, Pos};

/// Upper bounds of the spec's numbers: far past any real job, low enough
/// that no count overflows the store (SQLite's 64-bit integers) or sizes
/// an allocation a machine cannot make. A value past one is one clear
/// error at its line (exit 2), never a failure later.
///
/// The other numbers have bounds of their own: `resources.workers` at most
/// [`Workers::LIMIT`], `resources.priority` an `i32`, fractions and Adam's
/// betas below 1, `adam_epsilon` at most 1. `training.seed` takes any
/// `u64`: the store keeps it only inside the spec's text, never in an
/// integer column.
pub mod limits {
    /// `training.max_steps`, `warmup_steps`, `eval_every`,
    /// `checkpoint.every_steps`.
    pub const STEPS: i128 = 1_000_000_000;
    /// `training.epochs`.
    pub const EPOCHS: i128 = 100_000;
    /// `training.global_batch_size` and `micro_batch_size`, in samples.
    pub const BATCH: i128 = 1 << 20;
    /// `checkpoint.keep_last`.
    pub const KEEP_LAST: i128 = 10_000;
    /// `checkpoint.max_failures`.
    pub const MAX_FAILURES: i128 = 1_000;
    /// `dataset.max_seq_len`, in tokens.
    pub const SEQ_LEN: i128 = 1 << 20;
    /// `lora.r`.
    pub const RANK: i128 = 1024;
    /// `resources.threads_per_worker`.
    pub const THREADS: i128 = 1024;
    /// `training.learning_rate`.
    pub const LEARNING_RATE: f64 = 10.0;
    /// `lora.alpha`, `training.weight_decay`, `training.max_grad_norm`.
    pub const SCALE: f64 = 1e6;
}

/// Reads `root` (the parsed document, `None` if empty) into a spec.
pub(super) fn read(
    root: Option<&Node>,
    source: &str,
    file: &str,
    base_dir: &Path,
) -> Result<JobSpec, Vec<SpecProblem>> {
    let mut reader = Reader {
        source,
        file,
        base_dir,
        problems: Vec::new(),
    };
    let spec = match root {
        Some(root) => reader.job(root),
        None => {
            reader.report(
                Pos::START,
                "",
                "the spec is empty; it needs at least name, model, dataset.train and training.max_steps or training.epochs",
            );
            None
        }
    };
    let mut problems = reader.problems;
    match spec {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => {
            problems.sort_by_key(|problem| (problem.line, problem.column));
            Err(problems)
        }
    }
}

impl Reader<'_> {
    // ----- the job -------------------------------------------------------

    fn job(&mut self, root: &Node) -> Option<JobSpec> {
        let top = self.section(String::new(), root.pos, Some(root), &ROOT);
        let name = self.name(&top);
        let (model, model_dtype) = self.model(&top);
        let dataset = self.dataset(&top);
        let lora = self.lora(&top);
        let resources = self.resources(&top);
        let training = self.training(&top, &resources);
        let checkpoint = self.checkpoint(&top);
        let output = self.output(&top);

        // Evaluation needs something to evaluate on.
        if dataset.no_validation {
            let hint =
                "needs validation data: set dataset.validation or dataset.validation_fraction";
            if let Some(at) = training.eval_every_at {
                let message = format!("{hint}, or 0 to turn evaluation off");
                self.report(at.pos, at.path, message);
            }
            if let Some(at) = checkpoint.keep_best_at {
                self.report(at.pos, at.path, format!("{hint}, or false"));
            }
        }

        Some(JobSpec {
            name: name?,
            model: model?,
            model_dtype,
            dataset: dataset.spec?,
            lora,
            training: training.spec?,
            resources: resources.spec,
            checkpoint: checkpoint.spec,
            output,
        })
    }

    fn name(&mut self, top: &Section) -> Option<String> {
        let name = match self.text(top, "name", "free text") {
            Field::Given(name) => name,
            Field::Absent => {
                if !top.broken {
                    self.report(top.pos, "name", "missing; set a free-text name for the job");
                }
                return None;
            }
            Field::Invalid => return None,
        };
        let Scalar {
            text: name,
            node,
            path,
        } = name;
        let problem = if name.trim().is_empty() {
            Some("must not be empty".to_owned())
        } else if name.chars().any(char::is_control) {
            Some("must be one line of text without control characters".to_owned())
        } else if name.chars().count() > 256 {
            Some(format!(
                "must be at most 256 characters, got {}",
                name.chars().count()
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.report(node.pos, path, message);
                None
            }
            None => Some(name),
        }
    }

    /// `model`: where the weights come from, and `model.dtype` if given.
    fn model(&mut self, top: &Section) -> (Option<ModelSpec>, Option<ModelDType>) {
        let section = self.child(top, "model", &MODEL);
        let dtype = self
            .word(&section, "dtype", ModelDType::NAMES, ModelDType::parse)
            .given();
        let source = match self.one_of(&section, "path", "preset") {
            Some("path") => self
                .path_or_url(&section, "path")
                .given()
                .map(ModelSpec::Path),
            Some(_) => self
                .word(&section, "preset", Preset::NAMES, Preset::parse)
                .given()
                .map(ModelSpec::Preset),
            None => {
                if !section.broken {
                    self.report(
                        section.pos,
                        "model",
                        format!(
                            "missing; set model.path (a Hugging Face folder, .gguf file or URL) or model.preset ({})",
                            Preset::NAMES.join(", ")
                        ),
                    );
                }
                None
            }
        };
        (source, dtype)
    }

    fn dataset(&mut self, top: &Section) -> DatasetRead {
        let section = self.child(top, "dataset", &DATASET);
        let train = self.path_or_url(&section, "train");
        if matches!(train, Field::Absent) && !section.broken {
            self.report(
                section.pos,
                "dataset.train",
                "missing; set the path or URL of the training data",
            );
        }
        let validation = match self.one_of(&section, "validation", "validation_fraction") {
            Some("validation") => self
                .path_or_url(&section, "validation")
                .map(Validation::Data),
            Some(_) => self
                .float(&section, "validation_fraction", "in (0, 0.5]", |v| {
                    v > 0.0 && v <= 0.5
                })
                .map(Validation::Fraction),
            None => Field::Absent,
        };
        let no_validation = matches!(validation, Field::Absent);
        let format = self.word(
            &section,
            "format",
            DatasetFormat::NAMES,
            DatasetFormat::parse,
        );
        let max_seq_len = self.int(&section, "max_seq_len", 8, limits::SEQ_LEN);
        let packing = self.boolean(&section, "packing");
        let train_on_inputs = self.boolean(&section, "train_on_inputs");
        let spec = train.given().map(|train| DatasetSpec {
            train,
            validation: validation.given(),
            format: format.or(defaults::FORMAT),
            max_seq_len: max_seq_len.map(as_u32).or(defaults::MAX_SEQ_LEN),
            packing: packing.or(defaults::PACKING),
            train_on_inputs: train_on_inputs.or(defaults::TRAIN_ON_INPUTS),
        });
        DatasetRead {
            spec,
            no_validation,
        }
    }

    fn lora(&mut self, top: &Section) -> LoraSpec {
        let section = self.child(top, "lora", &LORA);
        let r = self.int(&section, "r", 1, limits::RANK).map(as_u32);
        let alpha = self.float(&section, "alpha", "greater than 0 and at most 1e6", |v| {
            v > 0.0 && v <= limits::SCALE
        });
        let dropout = self.float(&section, "dropout", "in [0, 1)", |v| {
            (0.0..1.0).contains(&v)
        });
        let target_modules = self.target_modules(&section);
        let use_rslora = self.boolean(&section, "use_rslora");
        let init_adapter = self.path_or_url(&section, "init_adapter");
        LoraSpec {
            r: r.or(defaults::R),
            alpha: alpha.or(defaults::ALPHA),
            dropout: dropout.or(defaults::DROPOUT),
            target_modules: target_modules
                .unwrap_or_else(|| TargetModules::List(defaults::TARGET_MODULES.to_vec())),
            use_rslora: use_rslora.or(defaults::USE_RSLORA),
            init_adapter: init_adapter.given(),
        }
    }

    fn target_modules(&mut self, section: &Section) -> Option<TargetModules> {
        let entry = section.entry("target_modules")?;
        let path = section.path_to(&entry.spelled);
        let expected = format!(
            "expected {} or a list of modules such as [q_proj, v_proj]",
            TargetModules::ALL_LINEAR
        );
        let items = match &entry.value.kind {
            Kind::Seq(items) => items,
            Kind::Map(_) => {
                self.report(
                    entry.value.pos,
                    path,
                    format!("{expected}, got {}", entry.value),
                );
                return None;
            }
            _ => {
                let text = entry.value.scalar_text(self.source).unwrap_or_default();
                if text == TargetModules::ALL_LINEAR {
                    return Some(TargetModules::AllLinear);
                }
                let message = if TargetModule::parse(&text).is_some() {
                    format!("{expected}, got {:?}; write [{text}]", text)
                } else {
                    let mut allowed = vec![TargetModules::ALL_LINEAR];
                    allowed.extend_from_slice(TargetModule::NAMES);
                    unknown_value(&text, &allowed)
                };
                self.report(entry.value.pos, path, message);
                return None;
            }
        };
        if items.is_empty() {
            self.report(
                entry.value.pos,
                path,
                format!(
                    "must name at least one module, or be {}",
                    TargetModules::ALL_LINEAR
                ),
            );
            return None;
        }
        let mut modules = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            let text = item.scalar_text(self.source);
            match text.as_deref().and_then(TargetModule::parse) {
                Some(module) if modules.contains(&module) => {
                    self.report(item.pos, item_path, format!("{module} is listed twice"));
                    ok = false;
                }
                Some(module) => modules.push(module),
                None => {
                    let message = match text.as_deref() {
                        Some(TargetModules::ALL_LINEAR) => format!(
                            "{0} is not a module; write target_modules: {0} (without the list)",
                            TargetModules::ALL_LINEAR
                        ),
                        Some(text) => unknown_value(text, TargetModule::NAMES),
                        None => format!(
                            "expected one of {}, got {item}",
                            TargetModule::NAMES.join(", ")
                        ),
                    };
                    self.report(item.pos, item_path, message);
                    ok = false;
                }
            }
        }
        ok.then_some(TargetModules::List(modules))
    }

    fn resources(&mut self, top: &Section) -> ResourcesRead {
        let section = self.child(top, "resources", &RESOURCES);
        let workers = self.workers(&section);
        let workers_ok = !matches!(workers, Field::Invalid);
        let backend = self.word(&section, "backend", Backend::NAMES, Backend::parse);
        let threads = self.int(&section, "threads_per_worker", 1, limits::THREADS);
        let priority = self.int(&section, "priority", i32::MIN.into(), i32::MAX.into());
        ResourcesRead {
            spec: ResourcesSpec {
                workers: workers.or(Workers::fixed(defaults::WORKERS)),
                backend: backend.or(defaults::BACKEND),
                threads_per_worker: threads.map(as_u32).or(defaults::THREADS_PER_WORKER),
                priority: priority
                    .map(|v| i32::try_from(v).unwrap_or_default())
                    .or(defaults::PRIORITY),
            },
            workers_ok,
        }
    }

    fn workers(&mut self, section: &Section) -> Field<Workers> {
        let Some(entry) = section.entry("workers") else {
            return Field::Absent;
        };
        let path = section.path_to(&entry.spelled);
        let node = entry.value;
        let limit = Workers::LIMIT;
        let result = match &node.kind {
            Kind::Int(count) => match u32::try_from(*count) {
                Ok(count) if (1..=limit).contains(&count) => Ok(Workers::fixed(count)),
                _ => Err(format!("must be between 1 and {limit}, got {count}")),
            },
            Kind::Str(text) => match parse_workers(text) {
                Some(w) if w.min >= 1 && w.min <= w.max && w.max <= limit => Ok(w),
                Some(_) if text.contains("..") => Err(format!(
                    "a range must have 1 <= min <= max <= {limit}, got {text:?}"
                )),
                Some(w) => Err(format!("must be between 1 and {limit}, got {}", w.min)),
                None => Err(format!(
                    "expected a worker count such as 2 or a range such as \"1..4\", got {node}"
                )),
            },
            _ => Err(format!(
                "expected a worker count such as 2 or a range such as \"1..4\", got {node}"
            )),
        };
        match result {
            Ok(workers) => Field::Given(workers),
            Err(message) => {
                self.report(node.pos, path, message);
                Field::Invalid
            }
        }
    }

    fn training(&mut self, top: &Section, resources: &ResourcesRead) -> TrainingRead {
        let section = self.child(top, "training", &TRAINING);
        let length = match self.one_of(&section, "max_steps", "epochs") {
            Some("max_steps") => self
                .int(&section, "max_steps", 1, limits::STEPS)
                .map(|v| TrainingLength::MaxSteps(as_u64(v))),
            Some(_) => self
                .int(&section, "epochs", 1, limits::EPOCHS)
                .map(|v| TrainingLength::Epochs(as_u32(v))),
            None => {
                if !section.broken {
                    self.report(
                        section.pos,
                        "training.max_steps",
                        "missing; set training.max_steps or training.epochs",
                    );
                }
                Field::Invalid
            }
        };
        let global = self.int(&section, "global_batch_size", 1, limits::BATCH);
        let micro = self.int(&section, "micro_batch_size", 1, limits::BATCH);
        let learning_rate = self.float(
            &section,
            "learning_rate",
            "greater than 0 and at most 10",
            |v| v > 0.0 && v <= limits::LEARNING_RATE,
        );
        let schedule = self.word(&section, "schedule", Schedule::NAMES, Schedule::parse);
        let warmup = match self.one_of(&section, "warmup_steps", "warmup_ratio") {
            Some("warmup_steps") => self
                .int(&section, "warmup_steps", 0, limits::STEPS)
                .map(|v| Warmup::Steps(as_u64(v))),
            Some(_) => self
                .float(&section, "warmup_ratio", "in [0, 1)", |v| {
                    (0.0..1.0).contains(&v)
                })
                .map(Warmup::Ratio),
            None => Field::Absent,
        };
        let weight_decay = self.float(&section, "weight_decay", "between 0 and 1e6", |v| {
            (0.0..=limits::SCALE).contains(&v)
        });
        let max_grad_norm = self.float(
            &section,
            "max_grad_norm",
            "between 0 and 1e6 (0 turns clipping off)",
            |v| (0.0..=limits::SCALE).contains(&v),
        );
        let eval_every = self.int(&section, "eval_every", 0, limits::STEPS);
        let seed = self.int(&section, "seed", 0, u64::MAX.into());
        let beta1 = self.float(&section, "adam_beta1", "in [0, 1)", |v| {
            (0.0..1.0).contains(&v)
        });
        let beta2 = self.float(&section, "adam_beta2", "in [0, 1)", |v| {
            (0.0..1.0).contains(&v)
        });
        let epsilon = self.float(&section, "adam_epsilon", "in (0, 1]", |v| {
            v > 0.0 && v <= 1.0
        });
        let checkpointing = self.boolean(&section, "gradient_checkpointing");

        // The global batch splits evenly over micro-batches on every worker.
        let micro_ok = !matches!(micro, Field::Invalid);
        let micro_note = if matches!(micro, Field::Absent) {
            format!(
                " (micro_batch_size defaults to {})",
                defaults::MICRO_BATCH_SIZE
            )
        } else {
            String::new()
        };
        let micro = micro.map(as_u32).or(defaults::MICRO_BATCH_SIZE);
        let workers = resources.spec.workers;
        let per_pass = u64::from(micro) * u64::from(workers.min);
        let global = match global {
            Field::Given(global) => {
                let global = as_u32(global);
                if let Some(at) = at(&section, "global_batch_size")
                    && micro_ok
                    && resources.workers_ok
                    && !u64::from(global).is_multiple_of(per_pass)
                {
                    let which = if workers.is_elastic() {
                        "minimum workers"
                    } else {
                        "workers"
                    };
                    self.report(
                        at.pos,
                        at.path,
                        format!(
                            "must be a positive multiple of micro_batch_size × {which} = {micro} × {} = {per_pass}{micro_note}, got {global}",
                            workers.min
                        ),
                    );
                }
                global
            }
            Field::Absent | Field::Invalid => match u32::try_from(per_pass) {
                Ok(global) => global,
                Err(_) => {
                    self.report(
                        section.pos,
                        "training.global_batch_size",
                        format!(
                            "micro_batch_size × workers = {micro} × {} is too large a batch",
                            workers.min
                        ),
                    );
                    u32::MAX
                }
            },
        };

        let eval_every_at =
            at(&section, "eval_every").filter(|_| eval_every.is_given_and(|&steps| steps > 0));
        let spec = length.given().map(|length| TrainingSpec {
            length,
            global_batch_size: global,
            micro_batch_size: micro,
            learning_rate: learning_rate.or(defaults::LEARNING_RATE),
            schedule: schedule.or(defaults::SCHEDULE),
            warmup: warmup.or(Warmup::Steps(defaults::WARMUP_STEPS)),
            weight_decay: weight_decay.or(defaults::WEIGHT_DECAY),
            max_grad_norm: max_grad_norm.or(defaults::MAX_GRAD_NORM),
            eval_every: eval_every.map(as_u64).or(defaults::EVAL_EVERY),
            seed: seed.map(as_u64).or(defaults::SEED),
            adam_beta1: beta1.or(defaults::ADAM_BETA1),
            adam_beta2: beta2.or(defaults::ADAM_BETA2),
            adam_epsilon: epsilon.or(defaults::ADAM_EPSILON),
            gradient_checkpointing: checkpointing.or(defaults::GRADIENT_CHECKPOINTING),
        });
        TrainingRead {
            spec,
            eval_every_at,
        }
    }

    fn checkpoint(&mut self, top: &Section) -> CheckpointRead {
        let section = self.child(top, "checkpoint", &CHECKPOINT);
        let every_steps = self.int(&section, "every_steps", 0, limits::STEPS);
        let keep_last = self.int(&section, "keep_last", 1, limits::KEEP_LAST);
        let keep_best = self.boolean(&section, "keep_best");
        let storage = self.path_or_url(&section, "storage");
        let max_failures = self.int(&section, "max_failures", 0, limits::MAX_FAILURES);
        let keep_best_at =
            at(&section, "keep_best").filter(|_| keep_best.is_given_and(|&keep| keep));
        let storage = storage.given().unwrap_or_else(|| {
            resolve(defaults::STORAGE, self.base_dir)
                .unwrap_or_else(|_| PathOrUrl::Path(PathBuf::from(defaults::STORAGE)))
        });
        CheckpointRead {
            spec: CheckpointSpec {
                every_steps: every_steps.map(as_u64).or(defaults::EVERY_STEPS),
                keep_last: keep_last.map(as_u32).or(defaults::KEEP_LAST),
                keep_best: keep_best.or(defaults::KEEP_BEST),
                storage,
                max_failures: max_failures.map(as_u32).or(defaults::MAX_FAILURES),
            },
            keep_best_at,
        }
    }

    fn output(&mut self, top: &Section) -> OutputSpec {
        let section = self.child(top, "output", &OUTPUT);
        OutputSpec {
            dir: self.path_or_url(&section, "dir").given(),
        }
    }
}

/// Where a key's value is, for problems found after reading it.
struct At {
    pos: Pos,
    path: String,
}

/// Where the value of `key` is, if given.
fn at(section: &Section, key: &str) -> Option<At> {
    section.entry(key).map(|entry| At {
        pos: entry.value.pos,
        path: section.path_to(&entry.spelled),
    })
}

struct DatasetRead {
    spec: Option<DatasetSpec>,
    /// Neither `validation` nor `validation_fraction` given.
    no_validation: bool,
}

struct ResourcesRead {
    spec: ResourcesSpec,
    workers_ok: bool,
}

struct TrainingRead {
    spec: Option<TrainingSpec>,
    /// Where a positive `eval_every` is, to report it if nothing can be evaluated.
    eval_every_at: Option<At>,
}

struct CheckpointRead {
    spec: CheckpointSpec,
    /// Where `keep_best: true` is.
    keep_best_at: Option<At>,
}

/// `"2"` or `"1..4"` (spaces allowed around the numbers).
fn parse_workers(text: &str) -> Option<Workers> {
    let number = |part: &str| part.trim().parse::<u32>().ok();
    match text.split_once("..") {
        Some((min, max)) => Some(Workers {
            min: number(min)?,
            max: number(max)?,
        }),
        None => number(text).map(Workers::fixed),
    }
}
