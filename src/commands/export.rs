//! `lorafleet export --merged`: a base model with an adapter merged in, as a
//! Hugging Face model folder or a llama.cpp GGUF file (from a HF folder or
//! a GGUF base alike).
//!
//! Not here: the file formats themselves (`trainer::model::hf`,
//! `trainer::model::gguf`), merging (`trainer::lora`).

use std::path::Path;

use anyhow::Context;
use trainer::lora::{merge_into, peft};
use trainer::model::gguf::{self, GgufExport, GgufTensorType};
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
    let gguf_type = args.gguf_tensor_type().map_err(UsageError)?;
    if gguf_type.is_some() && args.output.extension().is_none_or(|e| e != "gguf") {
        return Err(UsageError(format!(
            "--format gguf writes one file; name it FILE.gguf (got {})",
            args.output.display()
        ))
        .into());
    }
    let source = ModelSource::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let merged = match gguf_type {
        None => write_merged(source, &args.adapter, &args.output)?,
        Some(tensor_type) => write_merged_gguf(
            source,
            &args.model,
            &args.adapter,
            &args.output,
            tensor_type,
        )?,
    };
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
    let merged = merge(&mut source, adapter_dir)?;
    hf::write_model(output, &source.config, &source.weights)?;
    if let Some(tokenizer) = &source.tokenizer {
        tokenizer
            .save_hf(output)
            .with_context(|| format!("cannot write the tokenizer to {}", output.display()))?;
    }
    Ok(merged)
}

/// Merges the PEFT adapter in `adapter_dir` into `source`, read from
/// `base` (a HF folder or a .gguf file), and writes the result as the GGUF
/// file `output`. The tokenizer comes from the base: its `tokenizer.json`,
/// or the `tokenizer.*` keys of a GGUF base as they were.
pub fn write_merged_gguf(
    mut source: ModelSource,
    base: &Path,
    adapter_dir: &Path,
    output: &Path,
    tensor_type: GgufTensorType,
) -> anyhow::Result<String> {
    let merged = merge(&mut source, adapter_dir)?;
    let tokenizer = if base.is_dir() {
        if base.join("tokenizer.json").exists() {
            gguf::tokenizer_metadata_from_hf_dir(base, source.config.vocab_size)
                .context("cannot describe the tokenizer in GGUF")?
        } else {
            Vec::new()
        }
    } else {
        gguf::tokenizer_metadata_from_gguf(base)?
    };
    let name = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let export = GgufExport {
        name: &name,
        config: &source.config,
        weights: &source.weights,
        tensor_type,
        tokenizer: &tokenizer,
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    gguf::write_gguf(output, &export)?;
    Ok(merged)
}

/// Merges the adapter into `source`'s weights; says what was merged.
fn merge(source: &mut ModelSource, adapter_dir: &Path) -> anyhow::Result<String> {
    let adapter = peft::load(adapter_dir, &source.config)
        .with_context(|| format!("cannot load adapter {}", adapter_dir.display()))?;
    merge_into(&mut source.weights, &adapter)?;
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
