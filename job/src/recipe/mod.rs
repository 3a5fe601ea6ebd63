//! The training recipe: one job spec trained by one rank, from loading its
//! inputs to its final state, with a collective, an event sink and a stop
//! flag it is given.
//!
//! [`JobInputs::load`] reads the model and the datasets; [`JobRun::start`]
//! checks with the other ranks that they run the same job on the same
//! data, builds the model, opens the run's checkpoints and resumes from
//! the newest that verifies (or starts from `lora.init_adapter`, or fresh);
//! [`JobRun::train`] runs the loop, committing a checkpoint every
//! `checkpoint.every_steps` steps in the background; [`JobRun::finish`]
//! waits for the last upload and sums the run up. `lorafleet train` and
//! `bench checkpoint` are its callers.
//!
//! Not here: parsing flags, signals, progress bars or where the final
//! adapter is written (the binary), joining the ring
//! (`trainer::collective`), placing ranks on a fleet (`coordinator`).

pub mod checkpoints;
pub mod init_adapter;
pub mod inputs;
pub mod sink;

use std::sync::Arc;
use std::time::Instant;

use trainer::collective::{Collective, CollectiveError};
use trainer::data::DataError;
use trainer::lora::LoraWeights;
use trainer::model::Llama;
use trainer::tokenizer::TextTokenizer;
use trainer::train::data_parallel::{TrainError, agree, checksum, fingerprint};
use trainer::train::{RunEnd, SampledSteps, TrainState};

pub use checkpoints::{RunCheckpoints, next_checkpoint, write_state};
pub use inputs::{JobInputs, RunPlan, compute_backend, frozen_dtype, model_source};
pub use sink::{Discard, EventObserver, EventSink};

use crate::JobEvent;
use crate::convert::UnsupportedBackend;
use crate::event::RunSummary;
use crate::spec::JobSpec;

/// The exit status of a rank process that stopped when asked (SIGTERM)
/// after committing a checkpoint at a step boundary (BSD's `EX_TEMPFAIL`).
pub const PREEMPTED_EXIT_CODE: i32 = 75;

/// The tenant of runs started by hand.
pub const LOCAL_TENANT: &str = "local";

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The spec or the run's options ask for something this run cannot
    /// do: bad input.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Backend(#[from] UnsupportedBackend),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// Something the run reads or writes failed; `what` says which.
    #[error("{what}")]
    Load {
        what: String,
        #[source]
        source: BoxError,
    },
}

impl RecipeError {
    pub(crate) fn context(what: impl Into<String>, source: impl Into<BoxError>) -> RecipeError {
        RecipeError::Load {
            what: what.into(),
            source: source.into(),
        }
    }

    fn checkpoint(source: trainer::checkpoint::CheckpointError) -> RecipeError {
        RecipeError::Load {
            what: "checkpoint storage failed".into(),
            source: source.into(),
        }
    }

    /// Whether the input was at fault (a spec value, a model or dataset
    /// file), rather than the run.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RecipeError::Input(_) | RecipeError::Backend(_) | RecipeError::Data(_)
        )
    }

    /// The ring peer this rank could not reach (no connection, or no
    /// answer in time), if that is why it failed.
    pub fn unreachable_peer(&self) -> Option<usize> {
        let collective = match self {
            RecipeError::Collective(e) | RecipeError::Train(TrainError::Collective(e)) => e,
            _ => return None,
        };
        match collective {
            CollectiveError::Connect { peer, .. }
            | CollectiveError::NoPeer { peer, .. }
            | CollectiveError::Timeout { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// Whose run this is: where its checkpoints go and who signs them.
#[derive(Clone, Debug)]
pub struct RunIdentity {
    /// A folder name in checkpoint storage ([`LOCAL_TENANT`] by hand).
    pub tenant: String,
    /// A folder name in checkpoint storage (the spec's name by hand).
    pub job_id: String,
    /// The coordinator's attempt number, when a worker runs it.
    pub attempt: Option<u32>,
    /// Continue from the newest verified checkpoint; otherwise earlier
    /// checkpoints of the same job are removed first.
    pub resume: bool,
}

impl RunIdentity {
    /// A run by hand of `spec`, or with the given tenant and job id; each
    /// must be one folder name.
    pub fn new(
        spec: &JobSpec,
        tenant: Option<&str>,
        job_id: Option<&str>,
        attempt: Option<u32>,
        resume: bool,
    ) -> Result<RunIdentity, RecipeError> {
        let tenant = tenant.unwrap_or(LOCAL_TENANT);
        let job_id = job_id.unwrap_or(&spec.name);
        check_path_part("--tenant", tenant)?;
        check_path_part("--job-id", job_id)?;
        Ok(RunIdentity {
            tenant: tenant.into(),
            job_id: job_id.into(),
            attempt,
            resume,
        })
    }

    /// What signs rank 0's manifests (empty: unsigned).
    pub fn writer(&self) -> String {
        self.attempt
            .map(|a| format!("job {} attempt {a}", self.job_id))
            .unwrap_or_default()
    }
}

/// A tenant or job id is one folder name in checkpoint storage.
fn check_path_part(flag: &str, value: &str) -> Result<(), RecipeError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RecipeError::Input(format!(
            "{flag} {value:?}: use letters, digits, '.', '_' and '-' only"
        )))
    }
}

/// How [`JobRun::train`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// It reached the end it was given.
    Done,
    /// It stopped when asked, after committing a checkpoint of `step`.
    Preempted { step: usize },
}

/// One rank's run of a job, between start and finish.
pub struct JobRun {
    pub spec: JobSpec,
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub plan: RunPlan,
    pub state: TrainState,
    collective: Box<dyn Collective>,
    checkpoints: RunCheckpoints,
    sink: Arc<dyn EventSink>,
    started: Instant,
}

impl JobRun {
    /// Agrees with the other ranks on the job and its data, builds the
    /// model on `device`, opens the checkpoints and finds the state to
    /// start from, and agrees on that too.
    pub fn start(
        inputs: JobInputs,
        mut collective: Box<dyn Collective>,
        device: &burn::tensor::Device,
        identity: &RunIdentity,
        sink: Arc<dyn EventSink>,
    ) -> Result<JobRun, RecipeError> {
        let started = Instant::now();
        let JobInputs { spec, source, plan } = inputs;
        let rank = collective.rank();
        // Ranks must run the same job on the same data.
        agree(
            &mut *collective,
            job_fingerprint(&spec, &plan.data.train),
            "the job spec and its dataset",
        )?;
        let (model, tokenizer) = source
            .into_model(device)
            .map_err(|e| RecipeError::context("cannot build the model", e))?;
        let tokenizer = tokenizer.ok_or_else(|| {
            RecipeError::Input(format!("{}: the model has no tokenizer", plan.base_model))
        })?;
        let checkpoints =
            RunCheckpoints::open(&spec, identity, rank, &plan.base_model, sink.clone())?;
        let restored = if identity.resume {
            checkpoints.restore(&model.config)?
        } else {
            None
        };
        let state = if let Some(state) = restored {
            eprintln!("resuming {} from step {}", spec.name, state.step);
            state
        } else if let Some(init) = &spec.lora.init_adapter {
            TrainState::new(init_adapter::load(init, &model.config)?)
        } else {
            TrainState::new(LoraWeights::init(
                &plan.lora,
                &model.config,
                plan.train.seed,
            ))
        };
        let lora = &plan.lora;
        if state.lora.config != *lora && state.step == 0 {
            return Err(RecipeError::Input(format!(
                "lora.init_adapter has r={} alpha={} targets {:?}, but the spec asks for r={} alpha={} targets {:?}",
                state.lora.config.r,
                state.lora.config.alpha,
                state.lora.config.target_modules,
                lora.r,
                lora.alpha,
                lora.target_modules
            )));
        }
        let what = format!("the starting state (step {})", state.step);
        agree(&mut *collective, checksum(&state.lora.to_flat()), &what)?;
        Ok(JobRun {
            spec,
            model,
            tokenizer,
            plan,
            state,
            collective,
            checkpoints,
            sink,
            started,
        })
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn world(&self) -> usize {
        self.collective.world()
    }

    /// Trains on `device` up to step `end` (at most the spec's last step),
    /// committing a checkpoint at every `checkpoint.every_steps` and at
    /// the end. Once `stop` says so (on any rank), every rank stops after
    /// the same step, and the run ends [`RunOutcome::Preempted`] once that
    /// step's checkpoint is committed.
    pub fn train(
        &mut self,
        device: &burn::tensor::Device,
        end: Option<usize>,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<RunOutcome, RecipeError> {
        let (rank, world) = (self.rank(), self.world());
        let train = &self.plan.train;
        let steps = SampledSteps {
            train: &self.plan.data.train,
            validation: self.plan.data.validation.as_ref(),
            sampler: &self.plan.sampler,
            micro_batch_size: self.spec.training.micro_batch_size as usize,
            pad_id: trainer::data::pad_id(&self.tokenizer),
            rank,
            world,
        };
        if rank == 0 {
            self.sink.emit(JobEvent::TrainStarted {
                step: self.state.step,
                total_steps: train.max_steps,
                world,
            });
        }
        let mut observer = EventObserver {
            sink: self.sink.clone(),
            report: rank == 0,
            stop,
        };
        let every = self.spec.checkpoint.every_steps as usize;
        let end = end.map_or(train.max_steps, |s| s.min(train.max_steps));
        while self.state.step < end {
            let next = next_checkpoint(self.state.step, every, end);
            let ended = trainer::train::run(
                &mut self.model,
                device,
                train,
                &steps,
                &mut *self.collective,
                &mut self.state,
                &mut observer,
                Some(next),
            )?;
            self.checkpoints.save(&self.state)?;
            if ended == RunEnd::Stopped && self.state.step < end {
                return Ok(RunOutcome::Preempted {
                    step: self.state.step,
                });
            }
        }
        Ok(RunOutcome::Done)
    }

    /// Waits for the last checkpoint upload and sums the run up. After a
    /// preemption every rank leaves only once rank 0's checkpoint is
    /// committed, and rank 0 emits `train.preempted`.
    pub fn finish(mut self, outcome: RunOutcome) -> Result<FinishedRun, RecipeError> {
        let location = self.checkpoints.location();
        let blocking_s = self.checkpoints.finish()?;
        let (rank, world) = (self.collective.rank(), self.collective.world());
        if let RunOutcome::Preempted { step } = outcome {
            self.collective.barrier()?;
            if rank == 0 {
                self.sink.emit(JobEvent::TrainPreempted {
                    step,
                    checkpoints: location.clone(),
                });
            }
        }
        let state = &self.state;
        let summary = RunSummary {
            name: self.spec.name.clone(),
            steps: state.step,
            train_loss: state.log.last().map(|m| m.loss),
            eval_loss_initial: state.evals.first().map(|e| e.eval_loss),
            eval_loss_final: state.evals.last().map(|e| e.eval_loss),
            trained_tokens: state.log.iter().map(|m| m.target_tokens).sum(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            output_dir: None,
            checkpoints: location,
            checkpoint_blocking_s: blocking_s,
            world,
        };
        Ok(FinishedRun {
            spec: self.spec,
            state: self.state,
            summary,
            output_dir: self.plan.output_dir,
            base_model: self.plan.base_model,
            rank,
        })
    }
}

/// A run whose checkpoints are all committed.
pub struct FinishedRun {
    pub spec: JobSpec,
    pub state: TrainState,
    pub summary: RunSummary,
    pub output_dir: std::path::PathBuf,
    pub base_model: String,
    pub rank: usize,
}

/// What every rank of a job must agree on: the spec, with local input
/// paths cut to their file names (each worker keeps its fetched inputs in
/// a folder of its own; the names are content hashes), and the tokens of
/// the training data.
fn job_fingerprint(spec: &JobSpec, train: &trainer::data::TokenizedDataset) -> u64 {
    use crate::spec::{ModelSpec, PathOrUrl, Validation};
    let name_only = |place: &mut PathOrUrl| {
        if let PathOrUrl::Path(path) = place
            && let Some(name) = path.file_name()
        {
            *path = name.into();
        }
    };
    let mut spec = spec.clone();
    name_only(&mut spec.dataset.train);
    if let Some(Validation::Data(v)) = &mut spec.dataset.validation {
        name_only(v);
    }
    if let ModelSpec::Path(p) = &mut spec.model {
        name_only(p);
    }
    let mut text = spec.to_yaml().into_bytes();
    for sample in train.samples() {
        text.extend(sample.input_ids.iter().flat_map(|id| id.to_le_bytes()));
        text.push(b'\n');
    }
    fingerprint(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_never_answered_is_named_however_the_error_is_wrapped() {
        let timeout = || CollectiveError::Timeout {
            rank: 0,
            peer: 1,
            call: "all_reduce_sum".into(),
            seq: 3,
            secs: 5.0,
        };
        let wrapped = RecipeError::Train(TrainError::Collective(timeout()));
        assert_eq!(wrapped.unreachable_peer(), Some(1));
        assert_eq!(
            RecipeError::Collective(timeout()).unreachable_peer(),
            Some(1)
        );
        let aborted = CollectiveError::Aborted {
            rank: 0,
            message: "rank 1 failed".into(),
        };
        assert_eq!(RecipeError::Collective(aborted).unreachable_peer(), None);
        assert_eq!(
            RecipeError::Input("disk full".into()).unreachable_peer(),
            None
        );
    }

    #[test]
    fn tenant_and_job_ids_must_be_one_folder_name() {
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(check_path_part("--job-id", bad).is_err(), "{bad:?}");
        }
        for good in ["local", "job-1", "a_b.c"] {
            assert!(check_path_part("--job-id", good).is_ok(), "{good:?}");
        }
    }
}
