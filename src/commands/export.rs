//! `lorafleet export --merged`: a base model with an adapter merged in, as a
//! Hugging Face model folder (from a HF folder or a GGUF base alike).

use std::path::Path;

use anyhow::Context;
use trainer::lora::{merge_into, peft};
use trainer::model::{ModelSource, hf};

use super::UsageError;
use crate::cli::ExportArgs;

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if !args.merged {
        return Err(UsageError(
            "pass --merged: the adapter folder is already a PEFT adapter, export writes the merged model".into(),
        )
        .into());
    }
    let source = ModelSource::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let merged = write_merged(source, &args.adapter, &args.output)?;
    println!("wrote {} with {merged}", args.output.display());
    Ok(())
}

/// Merges the PEFT adapter in `adapter_dir` into `source` and writes the
/// result as a HF model folder `output` (with the tokenizer, if the model
/// has one). Returns what was merged, e.g. "14 adapters merged (2 layers
/// × [...])".
pub fn write_merged(
    mut source: ModelSource,
    adapter_dir: &Path,
    output: &Path,
) -> anyhow::Result<String> {
    let adapter = peft::load(adapter_dir, &source.config)
        .with_context(|| format!("cannot load adapter {}", adapter_dir.display()))?;
    merge_into(&mut source.weights, &adapter)?;
    hf::write_model(output, &source.config, &source.weights)?;
    if let Some(tokenizer) = &source.tokenizer {
        tokenizer
            .save_hf(output)
            .with_context(|| format!("cannot write the tokenizer to {}", output.display()))?;
    }
    Ok(format!(
        "{} adapters merged ({} layers × {:?})",
        adapter.pairs.len(),
        source.config.num_hidden_layers,
        adapter
            .config
            .target_modules
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
    ))
}
