//! `lorafleet export --merged`: a base model with an adapter merged in, as a
//! Hugging Face model folder (from a HF folder or a GGUF base alike).

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
    let mut source = ModelSource::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let adapter = peft::load(&args.adapter, &source.config)
        .with_context(|| format!("cannot load adapter {}", args.adapter.display()))?;
    merge_into(&mut source.weights, &adapter)?;
    hf::write_model(&args.output, &source.config, &source.weights)?;
    if let Some(tokenizer) = &source.tokenizer {
        tokenizer
            .save_hf(&args.output)
            .with_context(|| format!("cannot write the tokenizer to {}", args.output.display()))?;
    }
    println!(
        "wrote {} with {} adapters merged ({} layers × {:?})",
        args.output.display(),
        adapter.pairs.len(),
        source.config.num_hidden_layers,
        adapter
            .config
            .target_modules
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
    );
    Ok(())
}
