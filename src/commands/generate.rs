//! `lorafleet generate`: complete a prompt with a model.

use std::io::Write;

use anyhow::Context;
use trainer::generate::{GenerateOptions, generate};
use trainer::model::ModelSource;
use trainer::tokenizer::ChatMessage;

use super::{UsageError, init_threads};
use crate::cli::GenerateArgs;

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    init_threads(args.threads);
    let device = trainer::device::default_device();
    let source = ModelSource::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let (mut model, tokenizer) = source.into_model(&device)?;
    if let Some(dir) = &args.adapter {
        let adapter = trainer::lora::peft::load(dir, &model.config)
            .with_context(|| format!("cannot load adapter {}", dir.display()))?;
        trainer::lora::attach(&mut model, &adapter, &device, false);
    }

    let needs_tokenizer = || {
        tokenizer.as_ref().ok_or_else(|| {
            UsageError(format!(
                "{} has no tokenizer: pass the prompt as --prompt-ids",
                args.model.display()
            ))
        })
    };
    let prompt_ids: Vec<u32> = if let Some(ids) = &args.prompt_ids {
        ids.clone()
    } else if let Some(text) = &args.prompt {
        needs_tokenizer()?.encode_prompt(text)?
    } else {
        let text = args.chat.as_deref().expect("clap requires one input");
        needs_tokenizer()?.encode_chat(&[ChatMessage::new("user", text)], true)?
    };

    let mut eos_ids = model.config.eos_token_ids.clone();
    if let Some(eos) = tokenizer.as_ref().and_then(|t| t.eos_id())
        && !eos_ids.contains(&eos)
    {
        eos_ids.push(eos);
    }
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        eos_ids,
        ignore_eos: args.ignore_eos,
    };

    // Stream text as it comes unless the caller wants one JSON object.
    let mut shown = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut so_far = Vec::new();
    let output_ids = generate(&model, &prompt_ids, &options, &device, |token| {
        if args.json {
            return;
        }
        so_far.push(token);
        if let Some(t) = &tokenizer
            && let Ok(text) = t.decode(&so_far, true)
            && let Some(new) = text.strip_prefix(shown.as_str())
        {
            let _ = write!(stdout, "{new}");
            let _ = stdout.flush();
            shown = text;
        }
    })?;
    let text = match &tokenizer {
        Some(t) => t.decode(&output_ids, true)?,
        None => String::new(),
    };
    if args.json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "output_ids": output_ids,
            "text": text,
        });
        writeln!(stdout, "{v}")?;
    } else if tokenizer.is_none() {
        let ids: Vec<String> = output_ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    } else {
        if let Some(rest) = text.strip_prefix(shown.as_str()) {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
    }
    Ok(())
}
