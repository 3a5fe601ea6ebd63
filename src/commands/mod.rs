//! One module per subcommand; each exposes `run(args) -> anyhow::Result<()>`.

pub mod bench;
pub mod bench_checkpoint;
pub mod bench_fleet;
pub mod completions;
pub mod export;
pub mod generate;
pub mod init_model;
pub mod output_folder;
pub mod preemption;
pub mod train;
pub mod validate;
pub mod worker_device;

// Commands that call a coordinator.
pub mod chaos;
pub mod download;
pub mod fleet;
pub mod jobs;
pub mod logs;
pub mod run;
pub mod submit;

use crate::exit;

/// A failed call to the coordinator gets its own code (2 to 5, see
/// [`crate::connection::call_exit_code`]); otherwise bad input (a model file, a prompt,
/// an argument) is a usage error (2) and anything else a failure (1).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.is::<run::Interrupted>() {
        return exit::INTERRUPTED;
    }
    if err.is::<train::Preempted>() {
        return exit::PREEMPTED;
    }
    if let Some(code) = crate::connection::call_exit_code(err) {
        return code;
    }
    let bad_input = err.chain().any(|cause| {
        cause.is::<trainer::model::ModelError>()
            || cause.is::<trainer::tokenizer::TokenizerError>()
            || cause.is::<trainer::generate::GenerateError>()
            || cause.is::<trainer::data::DataError>()
            || cause.is::<job::SpecError>()
            || cause.is::<UsageError>()
            || matches!(
                cause.downcast_ref::<job::recipe::RecipeError>(),
                Some(e) if e.is_bad_input()
            )
            || matches!(
                cause.downcast_ref(),
                Some(trainer::collective::CollectiveError::Config(_))
            )
    });
    if bad_input { exit::USAGE } else { exit::FAILED }
}

/// A request the command cannot serve as asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Sizes the CPU pool before any tensor work.
pub fn init_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        trainer::device::set_cpu_threads(n);
    }
}
