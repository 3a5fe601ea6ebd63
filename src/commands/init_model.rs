//! `lorafleet init-model`: write a random Llama as a HF folder.

use anyhow::Context;
use trainer::model::{ModelSource, hf};

use crate::cli::InitModelArgs;

pub fn run(args: InitModelArgs) -> anyhow::Result<()> {
    let preset = args.preset.preset();
    let mut source = ModelSource::random(preset, args.seed);
    if args.tie_embeddings {
        source.config.tie_word_embeddings = true;
        source.weights = trainer::model::init::random_weights(&source.config, args.seed);
    }
    hf::write_model(&args.output, &source.config, &source.weights)?;
    let tokenizer = source.tokenizer.expect("random models carry a tokenizer");
    tokenizer
        .save_hf(&args.output)
        .with_context(|| format!("cannot write the tokenizer to {}", args.output.display()))?;
    println!(
        "wrote {} model ({:.2}M parameters, seed {}) to {}",
        preset.name(),
        source.config.num_parameters() as f64 / 1e6,
        args.seed,
        args.output.display()
    );
    Ok(())
}
