//! The keys each section of the spec allows, their aliases, and the
//! messages for keys and values that are not allowed.

use super::suggest::closest;

/// The keys a mapping may hold.
pub(super) struct Schema {
    pub keys: &'static [&'static str],
    /// `(alias, key)`: familiar spellings from Axolotl, torchtune and PEFT,
    /// read as `key`.
    pub aliases: &'static [(&'static str, &'static str)],
}

pub(super) const ROOT: Schema = Schema {
    keys: &[
        "name",
        "model",
        "dataset",
        "lora",
        "training",
        "resources",
        "checkpoint",
        "output",
    ],
    aliases: &[],
};

pub(super) const MODEL: Schema = Schema {
    keys: &["path", "preset", "dtype"],
    aliases: &[],
};

pub(super) const DATASET: Schema = Schema {
    keys: &[
        "train",
        "validation",
        "validation_fraction",
        "format",
        "max_seq_len",
        "packing",
        "train_on_inputs",
    ],
    aliases: &[
        ("sequence_len", "max_seq_len"),
        ("sample_packing", "packing"),
        ("val_set_size", "validation_fraction"),
    ],
};

pub(super) const LORA: Schema = Schema {
    keys: &[
        "r",
        "alpha",
        "dropout",
        "target_modules",
        "use_rslora",
        "init_adapter",
    ],
    aliases: &[
        ("lora_r", "r"),
        ("lora_rank", "r"),
        ("lora_alpha", "alpha"),
        ("lora_dropout", "dropout"),
        ("lora_target_modules", "target_modules"),
    ],
};

pub(super) const TRAINING: Schema = Schema {
    keys: &[
        "max_steps",
        "epochs",
        "global_batch_size",
        "micro_batch_size",
        "learning_rate",
        "schedule",
        "warmup_steps",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "eval_every",
        "seed",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "gradient_checkpointing",
    ],
    aliases: &[
        ("num_epochs", "epochs"),
        ("eval_steps", "eval_every"),
        ("enable_activation_checkpointing", "gradient_checkpointing"),
        ("activation_checkpointing", "gradient_checkpointing"),
    ],
};

pub(super) const RESOURCES: Schema = Schema {
    keys: &["workers", "backend", "threads_per_worker", "priority"],
    aliases: &[],
};

pub(super) const CHECKPOINT: Schema = Schema {
    keys: &[
        "every_steps",
        "keep_last",
        "keep_best",
        "storage",
        "max_failures",
    ],
    aliases: &[
        ("save_steps", "every_steps"),
        ("save_total_limit", "keep_last"),
    ],
};

pub(super) const OUTPUT: Schema = Schema {
    keys: &["dir"],
    aliases: &[],
};

/// Every section, for suggesting a key that belongs in another one.
const SECTIONS: &[(&str, &Schema)] = &[
    ("model", &MODEL),
    ("dataset", &DATASET),
    ("lora", &LORA),
    ("training", &TRAINING),
    ("resources", &RESOURCES),
    ("checkpoint", &CHECKPOINT),
    ("output", &OUTPUT),
];

/// The schema of the section named `name` (canonical), if it is one.
pub(super) fn section_schema(name: &str) -> Option<&'static Schema> {
    SECTIONS
        .iter()
        .find(|(section, _)| *section == name)
        .map(|(_, schema)| *schema)
}

/// Keys from other tools that need more than a new name.
const ADVICE: &[(&str, &str)] = &[
    (
        "gradient_accumulation_steps",
        "set training.global_batch_size instead; accumulation steps are global_batch_size / (micro_batch_size × workers)",
    ),
    (
        "lora_attn_modules",
        "use lora.target_modules, e.g. [q_proj, k_proj, v_proj, o_proj]",
    ),
    ("lora_target_linear", "use lora.target_modules: all-linear"),
];

/// Words people reach for, and the key they mean (not accepted as aliases:
/// they are too vague, or mean something slightly different elsewhere).
const SYNONYMS: &[(&str, &str)] = &[
    ("rank", "lora.r"),
    ("lr", "training.learning_rate"),
    ("scheduler", "training.schedule"),
    ("lr_scheduler", "training.schedule"),
    ("lr_scheduler_type", "training.schedule"),
    ("batch_size", "training.global_batch_size"),
    ("steps", "training.max_steps"),
    ("num_steps", "training.max_steps"),
    ("num_train_epochs", "training.epochs"),
    ("warmup", "training.warmup_steps"),
    ("grad_clip", "training.max_grad_norm"),
    ("clip_grad_norm", "training.max_grad_norm"),
    ("eval_interval", "training.eval_every"),
    ("save_every", "checkpoint.every_steps"),
    ("output_dir", "output.dir"),
    ("num_workers", "resources.workers"),
    ("device", "resources.backend"),
    ("threads", "resources.threads_per_worker"),
    ("validation_split", "dataset.validation_fraction"),
    ("seq_len", "dataset.max_seq_len"),
    ("max_length", "dataset.max_seq_len"),
    ("train_file", "dataset.train"),
    ("validation_file", "dataset.validation"),
    ("base_model", "model.path"),
    ("model_path", "model.path"),
    ("adapter", "lora.init_adapter"),
    ("modules", "lora.target_modules"),
    ("rslora", "lora.use_rslora"),
    ("torch_dtype", "model.dtype"),
    ("precision", "model.dtype"),
];

/// The message for a key that `schema` does not have.
pub(super) fn unknown_key(section_path: &str, schema: &Schema, key: &str) -> String {
    let allowed = schema.keys.join(", ");
    if let Some((_, advice)) = ADVICE.iter().find(|(known, _)| *known == key) {
        return format!("unknown key; {advice}");
    }
    match suggestion(section_path, schema, key) {
        Some(suggestion) => {
            format!("unknown key; did you mean {suggestion}? allowed keys: {allowed}")
        }
        None => format!("unknown key; allowed keys: {allowed}"),
    }
}

/// The key that `key` most likely meant, relative to `section_path` when it
/// belongs to the same section, as a full path otherwise.
fn suggestion(section_path: &str, schema: &Schema, key: &str) -> Option<String> {
    let relative = |full: &str| -> String {
        match full
            .strip_prefix(section_path)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            Some(rest) if !section_path.is_empty() => rest.to_owned(),
            _ => full.to_owned(),
        }
    };
    if let Some((_, full)) = SYNONYMS.iter().find(|(word, _)| *word == key) {
        return Some(relative(full));
    }
    let names_with_aliases = |schema: &'static Schema| {
        schema
            .keys
            .iter()
            .map(|key| (*key, *key))
            .chain(schema.aliases.iter().copied())
    };
    if let Some(close) = closest(key, schema.keys.iter().copied()) {
        return Some(close.to_owned());
    }
    if let Some((_, canonical)) = schema
        .aliases
        .iter()
        .find(|(alias, _)| closest(key, [*alias]).is_some())
    {
        return Some((*canonical).to_owned());
    }
    // A key of another section, spelt right or nearly.
    let everywhere = || {
        SECTIONS.iter().flat_map(move |(name, other)| {
            names_with_aliases(other).map(move |(spelled, canonical)| (*name, spelled, canonical))
        })
    };
    if let Some((name, _, canonical)) = everywhere().find(|(_, spelled, _)| *spelled == key) {
        return Some(format!("{name}.{canonical}"));
    }
    if ROOT.keys.contains(&key) {
        return Some(format!("{key} at the top level"));
    }
    let spellings: Vec<&str> = everywhere().map(|(_, spelled, _)| spelled).collect();
    let close = closest(key, spellings.iter().copied())?;
    everywhere()
        .find(|(_, spelled, _)| *spelled == close)
        .map(|(name, _, canonical)| format!("{name}.{canonical}"))
}

/// Values people reach for, and the value they mean.
const VALUE_SYNONYMS: &[(&str, &str)] = &[("gpu", "cuda"), ("torch", "tch"), ("libtorch", "tch")];

/// The message for a word that is not one of `names`.
pub(super) fn unknown_value(text: &str, names: &[&str]) -> String {
    let allowed = names.join(", ");
    let synonym = VALUE_SYNONYMS
        .iter()
        .find(|(word, meant)| *word == text && names.contains(meant))
        .map(|(_, meant)| *meant);
    match synonym.or_else(|| closest(text, names.iter().copied())) {
        Some(close) => format!("unknown value {text:?}; did you mean {close}? allowed: {allowed}"),
        None => format!("unknown value {text:?}; allowed: {allowed}"),
    }
}
