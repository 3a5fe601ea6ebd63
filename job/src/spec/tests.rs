use std::path::{Path, PathBuf};

use trainer::model::Preset;

use super::*;

/// Lines 1-5 of most specs below; tests add from line 6.
const BASE: &str = "name: t\nmodel:\n  preset: tiny\ndataset:\n  train: train.jsonl\n";

fn with(rest: &str) -> String {
    format!("{BASE}{rest}")
}

fn parse(yaml: &str) -> Result<JobSpec, SpecError> {
    JobSpec::from_yaml(yaml, "job.yaml", "/specs")
}

fn ok(yaml: &str) -> JobSpec {
    match parse(yaml) {
        Ok(spec) => spec,
        Err(error) => panic!("{error}"),
    }
}

fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(spec) => panic!("expected problems, parsed {spec:#?}"),
        Err(error) => error.problems().iter().map(ToString::to_string).collect(),
    }
}

/// The single problem with `yaml`.
fn problem(yaml: &str) -> String {
    let mut found = problems(yaml);
    assert_eq!(found.len(), 1, "{found:#?}");
    found.remove(0)
}

fn path(text: &str) -> PathOrUrl {
    PathOrUrl::Path(PathBuf::from(text))
}

fn url(text: &str) -> PathOrUrl {
    PathOrUrl::Url(text.to_owned())
}

const FULL: &str = "\
name: quickstart                  # free text
model:
  path: ./models/tiny
dataset:
  train: examples/data/quickstart.jsonl
  validation: s3://bucket/val.jsonl
  format: chat
  max_seq_len: 256
  packing: true
  train_on_inputs: true
lora:
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: [q_proj, k_proj, v_proj, o_proj]
  use_rslora: true
  init_adapter: ../adapters/start
training:
  max_steps: 200
  global_batch_size: 16
  micro_batch_size: 4
  learning_rate: 3.0e-4
  schedule: linear
  warmup_ratio: 0.05
  weight_decay: 0.01
  max_grad_norm: 0.5
  eval_every: 20
  seed: 7
  adam_beta1: 0.8
  adam_beta2: 0.95
  adam_epsilon: 1e-6
  gradient_checkpointing: true
resources:
  workers: \"1..4\"
  backend: cuda
  threads_per_worker: 2
  priority: -5
checkpoint:
  every_steps: 20
  keep_last: 5
  keep_best: true
  storage: gs://bucket/runs
  max_failures: 1
output:
  dir: /abs/final
";

#[test]
fn full_spec_parses_with_all_values() {
    let spec = ok(FULL);
    assert_eq!(spec.name, "quickstart");
    assert_eq!(spec.model, ModelSpec::Path(path("/specs/models/tiny")));
    assert_eq!(
        spec.dataset,
        DatasetSpec {
            train: path("/specs/examples/data/quickstart.jsonl"),
            validation: Some(Validation::Data(url("s3://bucket/val.jsonl"))),
            format: DatasetFormat::Chat,
            max_seq_len: 256,
            packing: true,
            train_on_inputs: true,
        }
    );
    assert_eq!(
        spec.lora,
        LoraSpec {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: TargetModules::List(vec![
                TargetModule::QProj,
                TargetModule::KProj,
                TargetModule::VProj,
                TargetModule::OProj,
            ]),
            use_rslora: true,
            init_adapter: Some(path("/adapters/start")),
        }
    );
    assert_eq!(
        spec.training,
        TrainingSpec {
            length: TrainingLength::MaxSteps(200),
            global_batch_size: 16,
            micro_batch_size: 4,
            learning_rate: 3.0e-4,
            schedule: Schedule::Linear,
            warmup: Warmup::Ratio(0.05),
            weight_decay: 0.01,
            max_grad_norm: 0.5,
            eval_every: 20,
            seed: 7,
            adam_beta1: 0.8,
            adam_beta2: 0.95,
            adam_epsilon: 1e-6,
            gradient_checkpointing: true,
        }
    );
    assert_eq!(
        spec.resources,
        ResourcesSpec {
            workers: Workers { min: 1, max: 4 },
            backend: Backend::Cuda,
            threads_per_worker: 2,
            priority: -5,
        }
    );
    assert_eq!(
        spec.checkpoint,
        CheckpointSpec {
            every_steps: 20,
            keep_last: 5,
            keep_best: true,
            storage: url("gs://bucket/runs"),
            max_failures: 1,
        }
    );
    assert_eq!(spec.output.dir, Some(path("/abs/final")));
}

#[test]
fn defaults_fill_everything_optional() {
    let spec = ok(&with("training:\n  max_steps: 10\n"));
    assert_eq!(spec.name, "t");
    assert_eq!(spec.model, ModelSpec::Preset(Preset::Tiny));
    assert_eq!(
        spec.dataset,
        DatasetSpec {
            train: path("/specs/train.jsonl"),
            validation: None,
            format: DatasetFormat::Auto,
            max_seq_len: 512,
            packing: false,
            train_on_inputs: false,
        }
    );
    assert_eq!(
        spec.lora,
        LoraSpec {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: TargetModules::List(vec![TargetModule::QProj, TargetModule::VProj]),
            use_rslora: false,
            init_adapter: None,
        }
    );
    assert_eq!(
        spec.training,
        TrainingSpec {
            length: TrainingLength::MaxSteps(10),
            global_batch_size: 4,
            micro_batch_size: 4,
            learning_rate: 2.0e-4,
            schedule: Schedule::Cosine,
            warmup: Warmup::Steps(0),
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            eval_every: 0,
            seed: 42,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            gradient_checkpointing: false,
        }
    );
    assert_eq!(
        spec.resources,
        ResourcesSpec {
            workers: Workers::fixed(1),
            backend: Backend::Cpu,
            threads_per_worker: 1,
            priority: 0,
        }
    );
    assert_eq!(
        spec.checkpoint,
        CheckpointSpec {
            every_steps: 100,
            keep_last: 3,
            keep_best: false,
            storage: path("/specs/runs"),
            max_failures: 3,
        }
    );
    assert_eq!(spec.output, OutputSpec { dir: None });
}

#[test]
fn default_global_batch_is_one_micro_batch_per_worker() {
    let spec = ok(&with(
        "training:\n  epochs: 2\n  micro_batch_size: 2\nresources:\n  workers: 3\n",
    ));
    assert_eq!(spec.training.length, TrainingLength::Epochs(2));
    assert_eq!(spec.training.global_batch_size, 6);
    assert_eq!(spec.training.accumulation_steps(3), Some(1));
}

#[test]
fn empty_values_count_as_not_given() {
    let spec = ok(&with(
        "lora:\n  r:\n  alpha: ~\ntraining:\n  max_steps: 10\n  warmup_steps:\n  warmup_ratio: 0.1\noutput:\n",
    ));
    assert_eq!(spec.lora.r, 8);
    assert_eq!(spec.lora.alpha, 16.0);
    assert_eq!(spec.training.warmup, Warmup::Ratio(0.1));
    assert_eq!(spec.output.dir, None);
}

#[test]
fn scalars_are_text_where_text_is_expected() {
    let spec =
        ok("name: 1.10\nmodel: {preset: tiny}\ndataset: {train: 2024}\ntraining: {max_steps: 1}\n");
    assert_eq!(spec.name, "1.10");
    assert_eq!(spec.dataset.train, path("/specs/2024"));
    let spec =
        ok("name: yes\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining: {max_steps: 1}\n");
    assert_eq!(spec.name, "yes");
}

// ----- value rules ---------------------------------------------------------

#[test]
fn lora_rank_must_be_between_1_and_1024() {
    let tail = "training:\n  max_steps: 10\n";
    assert_eq!(
        problem(&with(&format!("lora:\n  r: 0\n{tail}"))),
        "job.yaml:7:6: lora.r: must be between 1 and 1024, got 0"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  r: 1025\n{tail}"))),
        "job.yaml:7:6: lora.r: must be between 1 and 1024, got 1025"
    );
    assert_eq!(ok(&with(&format!("lora:\n  r: 1024\n{tail}"))).lora.r, 1024);
}

#[test]
fn wrong_types_are_reported_at_the_value() {
    let tail = "training:\n  max_steps: 10\n";
    assert_eq!(
        problem(&with(&format!("lora:\n  r: eight\n{tail}"))),
        "job.yaml:7:6: lora.r: expected an integer between 1 and 1024, got \"eight\""
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  r: 8.0\n{tail}"))),
        "job.yaml:7:6: lora.r: expected an integer between 1 and 1024, got 8.0"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  alpha: [1]\n{tail}"))),
        "job.yaml:7:10: lora.alpha: expected a number greater than 0 and at most 1e6, got a list"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  use_rslora: yes\n{tail}"))),
        "job.yaml:7:15: lora.use_rslora: expected true or false, got \"yes\""
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: {a: 1}\n")),
        "job.yaml:7:14: training.max_steps: expected an integer between 1 and 1000000000, got a mapping"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\n  learning_rate: \"3e-4\"\n"
        )),
        "job.yaml:8:18: training.learning_rate: expected a number greater than 0 and at most 10, got \"3e-4\""
    );
    assert_eq!(
        problem(
            "name: [a]\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:1:7: name: expected free text, got a list"
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\nlora: 8\n")),
        "job.yaml:8:7: lora: expected a mapping with keys r, alpha, dropout, target_modules, use_rslora, init_adapter, got 8"
    );
}

#[test]
fn lora_alpha_and_dropout_ranges() {
    let tail = "training:\n  max_steps: 10\n";
    assert_eq!(
        problem(&with(&format!("lora:\n  alpha: 0\n{tail}"))),
        "job.yaml:7:10: lora.alpha: must be greater than 0 and at most 1e6, got 0"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  alpha: -1.5\n{tail}"))),
        "job.yaml:7:10: lora.alpha: must be greater than 0 and at most 1e6, got -1.5"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  dropout: 1\n{tail}"))),
        "job.yaml:7:12: lora.dropout: must be in [0, 1), got 1"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  dropout: -0.1\n{tail}"))),
        "job.yaml:7:12: lora.dropout: must be in [0, 1), got -0.1"
    );
    assert_eq!(
        ok(&with(&format!("lora:\n  dropout: 0.99\n{tail}")))
            .lora
            .dropout,
        0.99
    );
}

#[test]
fn max_seq_len_is_at_least_8() {
    assert_eq!(
        problem(
            "name: t\nmodel: {preset: tiny}\ndataset:\n  train: d\n  max_seq_len: 7\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:5:16: dataset.max_seq_len: must be at least 8, got 7"
    );
}

#[test]
fn global_batch_is_a_multiple_of_micro_batch_times_workers() {
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\n  global_batch_size: 12\n  micro_batch_size: 8\n"
        )),
        "job.yaml:8:22: training.global_batch_size: must be a positive multiple of micro_batch_size × workers = 8 × 1 = 8, got 12"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\n  global_batch_size: 16\n  micro_batch_size: 4\nresources:\n  workers: 3\n"
        )),
        "job.yaml:8:22: training.global_batch_size: must be a positive multiple of micro_batch_size × workers = 4 × 3 = 12, got 16"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\n  global_batch_size: 6\n"
        )),
        "job.yaml:8:22: training.global_batch_size: must be a positive multiple of micro_batch_size × workers = 4 × 1 = 4 (micro_batch_size defaults to 4), got 6"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\n  global_batch_size: 0\n"
        )),
        "job.yaml:8:22: training.global_batch_size: must be at least 1, got 0"
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  micro_batch_size: 0\n")),
        "job.yaml:8:21: training.micro_batch_size: must be at least 1, got 0"
    );
}

#[test]
fn elastic_workers_need_a_multiple_of_the_minimum() {
    let yaml = |global: u32| {
        with(&format!(
            "training:\n  max_steps: 10\n  global_batch_size: {global}\n  micro_batch_size: 4\nresources:\n  workers: \"2..4\"\n"
        ))
    };
    assert_eq!(
        problem(&yaml(12)),
        "job.yaml:8:22: training.global_batch_size: must be a positive multiple of micro_batch_size × minimum workers = 4 × 2 = 8, got 12"
    );
    // 16 splits over 2 or 4 workers, not over 3.
    let spec = ok(&yaml(16));
    assert_eq!(spec.resources.workers, Workers { min: 2, max: 4 });
    assert_eq!(spec.usable_worker_counts(), vec![2, 4]);
    assert_eq!(spec.training.accumulation_steps(2), Some(2));
    assert_eq!(spec.training.accumulation_steps(3), None);
    assert_eq!(spec.training.accumulation_steps(4), Some(1));
}

#[test]
fn learning_rate_is_positive_and_finite() {
    for (value, got) in [
        ("0", "must be greater than 0 and at most 10, got 0"),
        ("-1e-3", "must be greater than 0 and at most 10, got -0.001"),
        ("11", "must be greater than 0 and at most 10, got 11"),
    ] {
        assert_eq!(
            problem(&with(&format!(
                "training:\n  max_steps: 10\n  learning_rate: {value}\n"
            ))),
            format!("job.yaml:8:18: training.learning_rate: {got}")
        );
    }
    for value in [".nan", ".inf"] {
        assert_eq!(
            problem(&with(&format!(
                "training:\n  max_steps: 10\n  learning_rate: {value}\n"
            ))),
            format!("job.yaml:8:18: training.learning_rate: must be a finite number, got {value}")
        );
    }
    let spec = ok(&with("training:\n  max_steps: 10\n  learning_rate: 2e-4\n"));
    assert_eq!(spec.training.learning_rate, 2e-4);
}

#[test]
fn warmup_ratio_is_below_1() {
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  warmup_ratio: 1.0\n")),
        "job.yaml:8:17: training.warmup_ratio: must be in [0, 1), got 1.0"
    );
    let spec = ok(&with("training:\n  max_steps: 10\n  warmup_ratio: 0.25\n"));
    assert_eq!(spec.training.warmup.steps(10), 2);
}

#[test]
fn max_grad_norm_is_non_negative_and_0_turns_clipping_off() {
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  max_grad_norm: -1\n")),
        "job.yaml:8:18: training.max_grad_norm: must be between 0 and 1e6 (0 turns clipping off), got -1"
    );
    assert_eq!(
        ok(&with("training:\n  max_steps: 10\n  max_grad_norm: 0\n"))
            .training
            .max_grad_norm,
        0.0
    );
}

#[test]
fn counts_are_not_negative() {
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  eval_every: -1\n")),
        "job.yaml:8:15: training.eval_every: must be at least 0, got -1"
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: 0\n")),
        "job.yaml:7:14: training.max_steps: must be at least 1, got 0"
    );
    assert_eq!(
        problem(&with("training:\n  epochs: 0\n")),
        "job.yaml:7:11: training.epochs: must be at least 1, got 0"
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  adam_beta2: 1\n")),
        "job.yaml:8:15: training.adam_beta2: must be in [0, 1), got 1"
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  adam_epsilon: 0\n")),
        "job.yaml:8:17: training.adam_epsilon: must be in (0, 1], got 0"
    );
}

#[test]
fn workers_is_a_count_or_a_range() {
    let yaml = |workers: &str| {
        with(&format!(
            "training:\n  max_steps: 10\nresources:\n  workers: {workers}\n"
        ))
    };
    assert_eq!(
        problem(&yaml("0")),
        "job.yaml:9:12: resources.workers: must be between 1 and 4096, got 0"
    );
    assert_eq!(
        problem(&yaml("\"4..2\"")),
        "job.yaml:9:12: resources.workers: a range must have 1 <= min <= max <= 4096, got \"4..2\""
    );
    assert_eq!(
        problem(&yaml("\"0..2\"")),
        "job.yaml:9:12: resources.workers: a range must have 1 <= min <= max <= 4096, got \"0..2\""
    );
    assert_eq!(
        problem(&yaml("many")),
        "job.yaml:9:12: resources.workers: expected a worker count such as 2 or a range such as \"1..4\", got \"many\""
    );
    assert_eq!(
        ok(&yaml("1..4")).resources.workers,
        Workers { min: 1, max: 4 }
    );
    assert_eq!(
        ok(&yaml("\" 2 .. 8 \"")).resources.workers,
        Workers { min: 2, max: 8 }
    );
    assert_eq!(ok(&yaml("\"3\"")).resources.workers, Workers::fixed(3));
    assert_eq!(ok(&yaml("\"2..2\"")).resources.workers, Workers::fixed(2));
}

#[test]
fn keep_last_is_at_least_1() {
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\ncheckpoint:\n  keep_last: 0\n"
        )),
        "job.yaml:9:14: checkpoint.keep_last: must be at least 1, got 0"
    );
}

#[test]
fn validation_fraction_is_in_0_to_one_half() {
    let yaml = |fraction: &str| {
        format!(
            "name: t\nmodel: {{preset: tiny}}\ndataset:\n  train: d\n  validation_fraction: {fraction}\ntraining: {{max_steps: 1}}\n"
        )
    };
    for fraction in ["0", "0.6", "-0.1"] {
        assert_eq!(
            problem(&yaml(fraction)),
            format!(
                "job.yaml:5:24: dataset.validation_fraction: must be in (0, 0.5], got {fraction}"
            )
        );
    }
    assert_eq!(
        ok(&yaml("0.5")).dataset.validation,
        Some(Validation::Fraction(0.5))
    );
}

#[test]
fn words_must_be_known_with_a_suggestion() {
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  schedule: cosin\n")),
        "job.yaml:8:13: training.schedule: unknown value \"cosin\"; did you mean cosine? allowed: constant, linear, cosine"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\nresources:\n  backend: gpu\n"
        )),
        "job.yaml:9:12: resources.backend: unknown value \"gpu\"; did you mean cuda? allowed: cpu, cuda, tch"
    );
    assert_eq!(
        problem("name: t\nmodel: {preset: huge}\ndataset: {train: d}\ntraining: {max_steps: 1}\n"),
        "job.yaml:2:17: model.preset: unknown value \"huge\"; allowed: tiny, small, tiny-gqa, smollm2-135m, smollm2-360m, llama-1b-shape"
    );
    assert_eq!(
        problem(
            "name: t\nmodel: {preset: tiny}\ndataset: {train: d, format: jsonl}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:3:29: dataset.format: unknown value \"jsonl\"; allowed: auto, text, completion, chat, alpaca, sharegpt"
    );
}

#[test]
fn target_modules_are_a_list_or_all_linear() {
    let yaml = |modules: &str| {
        with(&format!(
            "lora:\n  target_modules: {modules}\ntraining:\n  max_steps: 10\n"
        ))
    };
    assert_eq!(
        ok(&yaml("all-linear")).lora.target_modules,
        TargetModules::AllLinear
    );
    assert_eq!(
        ok(&yaml("all-linear")).lora.target_modules.modules(),
        TargetModule::ALL.to_vec()
    );
    assert_eq!(
        ok(&yaml("[gate_proj, up_proj, down_proj]"))
            .lora
            .target_modules,
        TargetModules::List(vec![
            TargetModule::GateProj,
            TargetModule::UpProj,
            TargetModule::DownProj
        ])
    );
    assert_eq!(
        problems(&yaml("[q_proj, q_prj, q_proj, all-linear]")),
        [
            "job.yaml:7:28: lora.target_modules[1]: unknown value \"q_prj\"; did you mean q_proj? allowed: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
            "job.yaml:7:35: lora.target_modules[2]: q_proj is listed twice",
            "job.yaml:7:43: lora.target_modules[3]: all-linear is not a module; write target_modules: all-linear (without the list)",
        ]
    );
    assert_eq!(
        problem(&yaml("[]")),
        "job.yaml:7:19: lora.target_modules: must name at least one module, or be all-linear"
    );
    assert_eq!(
        problem(&yaml("q_proj")),
        "job.yaml:7:19: lora.target_modules: expected all-linear or a list of modules such as [q_proj, v_proj], got \"q_proj\"; write [q_proj]"
    );
    assert_eq!(
        problem(&yaml("all_linear")),
        "job.yaml:7:19: lora.target_modules: unknown value \"all_linear\"; did you mean all-linear? allowed: all-linear, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
    );
}

#[test]
fn evaluation_needs_validation_data() {
    assert_eq!(
        problem(&with("training:\n  max_steps: 10\n  eval_every: 5\n")),
        "job.yaml:8:15: training.eval_every: needs validation data: set dataset.validation or dataset.validation_fraction, or 0 to turn evaluation off"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 10\ncheckpoint:\n  keep_best: true\n"
        )),
        "job.yaml:9:14: checkpoint.keep_best: needs validation data: set dataset.validation or dataset.validation_fraction, or false"
    );
    ok(&with(
        "  validation_fraction: 0.1\ntraining:\n  max_steps: 10\n  eval_every: 5\ncheckpoint:\n  keep_best: true\n",
    ));
}

// ----- keys ----------------------------------------------------------------

#[test]
fn unknown_keys_say_what_is_allowed_with_a_suggestion() {
    let tail = "training:\n  max_steps: 10\n";
    assert_eq!(
        problem(&with(&format!("lora:\n  rank: 8\n{tail}"))),
        "job.yaml:7:3: lora.rank: unknown key; did you mean r? allowed keys: r, alpha, dropout, target_modules, use_rslora, init_adapter"
    );
    assert_eq!(
        problem(&with(&format!("lora:\n  alhpa: 8\n{tail}"))),
        "job.yaml:7:3: lora.alhpa: unknown key; did you mean alpha? allowed keys: r, alpha, dropout, target_modules, use_rslora, init_adapter"
    );
    assert_eq!(
        problem(&with(&format!("{tail}  lr: 0.1\n"))),
        "job.yaml:8:3: training.lr: unknown key; did you mean learning_rate? allowed keys: max_steps, epochs, global_batch_size, micro_batch_size, learning_rate, schedule, warmup_steps, warmup_ratio, weight_decay, max_grad_norm, eval_every, seed, adam_beta1, adam_beta2, adam_epsilon, gradient_checkpointing"
    );
    assert_eq!(
        problem(&with(&format!("{tail}learning_rate: 0.1\n"))),
        "job.yaml:8:1: learning_rate: unknown key; did you mean training.learning_rate? allowed keys: name, model, dataset, lora, training, resources, checkpoint, output"
    );
    assert_eq!(
        problem(&with(&format!("{tail}trainig:\n  seed: 1\n"))),
        "job.yaml:8:1: trainig: unknown key; did you mean training? allowed keys: name, model, dataset, lora, training, resources, checkpoint, output"
    );
    assert_eq!(
        problem(&with(&format!("{tail}checkpoint:\n  frequency: 1\n"))),
        "job.yaml:9:3: checkpoint.frequency: unknown key; allowed keys: every_steps, keep_last, keep_best, storage, max_failures"
    );
    assert_eq!(
        problem(&with(&format!("{tail}  gradient_accumulation_steps: 4\n"))),
        "job.yaml:8:3: training.gradient_accumulation_steps: unknown key; set training.global_batch_size instead; accumulation steps are global_batch_size / (micro_batch_size × workers)"
    );
}

#[test]
fn familiar_aliases_are_accepted() {
    let spec = ok("\
name: t
model: {preset: tiny}
dataset:
  train: d
  sequence_len: 64
  sample_packing: true
  val_set_size: 0.1
lora:
  lora_r: 4
  lora_alpha: 8
  lora_dropout: 0.1
  lora_target_modules: [o_proj]
training:
  num_epochs: 3
  eval_steps: 7
checkpoint:
  save_steps: 9
  save_total_limit: 1
");
    assert_eq!(spec.dataset.max_seq_len, 64);
    assert!(spec.dataset.packing);
    assert_eq!(spec.dataset.validation, Some(Validation::Fraction(0.1)));
    assert_eq!(spec.lora.r, 4);
    assert_eq!(spec.lora.alpha, 8.0);
    assert_eq!(spec.lora.dropout, 0.1);
    assert_eq!(
        spec.lora.target_modules,
        TargetModules::List(vec![TargetModule::OProj])
    );
    assert_eq!(spec.training.length, TrainingLength::Epochs(3));
    assert_eq!(spec.training.eval_every, 7);
    assert_eq!(spec.checkpoint.every_steps, 9);
    assert_eq!(spec.checkpoint.keep_last, 1);
    assert_eq!(
        ok(&with("lora:\n  lora_rank: 32\ntraining:\n  max_steps: 1\n"))
            .lora
            .r,
        32
    );
    // Problems name the key as written.
    assert_eq!(
        problem(&with("lora:\n  lora_alpha: 0\ntraining:\n  max_steps: 1\n")),
        "job.yaml:7:15: lora.lora_alpha: must be greater than 0 and at most 1e6, got 0"
    );
}

#[test]
fn a_key_given_twice_is_reported_at_the_second() {
    assert_eq!(
        problem(&with("lora:\n  r: 4\n  r: 8\ntraining:\n  max_steps: 1\n")),
        "job.yaml:8:3: lora.r: given twice (first at line 7)"
    );
    assert_eq!(
        problem(&with(
            "lora:\n  alpha: 4\n  lora_alpha: 8\ntraining:\n  max_steps: 1\n"
        )),
        "job.yaml:8:3: lora.lora_alpha: same setting as lora.alpha at line 7; give only one"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 1\ntraining:\n  max_steps: 2\n"
        )),
        "job.yaml:8:1: training: given twice (first at line 6)"
    );
}

#[test]
fn both_alternatives_is_an_error_at_the_second() {
    assert_eq!(
        problem(
            "name: t\nmodel:\n  path: ./m\n  preset: tiny\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:3: model.preset: conflicts with model.path at line 3; give only one of path or preset"
    );
    assert_eq!(
        problem(
            "name: t\nmodel:\n  preset: tiny\n  path: ./m\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:3: model.path: conflicts with model.preset at line 3; give only one of path or preset"
    );
    assert_eq!(
        problem(&with(
            "  validation: v.jsonl\n  validation_fraction: 0.1\ntraining:\n  max_steps: 1\n"
        )),
        "job.yaml:7:3: dataset.validation_fraction: conflicts with dataset.validation at line 6; give only one of validation or validation_fraction"
    );
    assert_eq!(
        problem(&with("training:\n  epochs: 2\n  max_steps: 1\n")),
        "job.yaml:8:3: training.max_steps: conflicts with training.epochs at line 7; give only one of max_steps or epochs"
    );
    assert_eq!(
        problem(&with(
            "training:\n  max_steps: 1\n  warmup_steps: 1\n  warmup_ratio: 0.1\n"
        )),
        "job.yaml:9:3: training.warmup_ratio: conflicts with training.warmup_steps at line 8; give only one of warmup_steps or warmup_ratio"
    );
    // The alias of an alternative counts as that alternative.
    assert_eq!(
        problem(&with(
            "  validation: v.jsonl\n  val_set_size: 0.1\ntraining:\n  max_steps: 1\n"
        )),
        "job.yaml:7:3: dataset.val_set_size: conflicts with dataset.validation at line 6; give only one of validation or validation_fraction"
    );
}

#[test]
fn missing_required_keys() {
    assert_eq!(
        problems("resources: {workers: 1}\n"),
        [
            "job.yaml:1:1: name: missing; set a free-text name for the job",
            "job.yaml:1:1: model: missing; set model.path (a Hugging Face folder, .gguf file or URL) or model.preset (tiny, small, tiny-gqa, smollm2-135m, smollm2-360m, llama-1b-shape)",
            "job.yaml:1:1: dataset.train: missing; set the path or URL of the training data",
            "job.yaml:1:1: training.max_steps: missing; set training.max_steps or training.epochs",
        ]
    );
    // Inside a section that is there, at that section's key.
    assert_eq!(
        problems("name: t\nmodel: {}\ndataset:\n  format: text\ntraining:\n  seed: 1\n"),
        [
            "job.yaml:2:1: model: missing; set model.path (a Hugging Face folder, .gguf file or URL) or model.preset (tiny, small, tiny-gqa, smollm2-135m, smollm2-360m, llama-1b-shape)",
            "job.yaml:3:1: dataset.train: missing; set the path or URL of the training data",
            "job.yaml:5:1: training.max_steps: missing; set training.max_steps or training.epochs",
        ]
    );
    assert_eq!(
        problem(&with("training:\n  max_steps: 1\n").replace("name: t", "name: \"  \"")),
        "job.yaml:1:7: name: must not be empty"
    );
}

#[test]
fn empty_or_malformed_documents() {
    let empty = "job.yaml:1:1: the spec is empty; it needs at least name, model, dataset.train and training.max_steps or training.epochs";
    assert_eq!(problem(""), empty);
    assert_eq!(problem("# only a comment\n"), empty);
    assert_eq!(
        problem("- a\n- b\n"),
        "job.yaml:1:1: expected the spec to be a mapping with keys name, model, dataset, lora, training, resources, checkpoint, output, got a list"
    );
    let syntax = parse("name: t\nlora:\n  r: [1\n").unwrap_err();
    let syntax = &syntax.problems()[0];
    assert_eq!(
        (syntax.line, syntax.column, syntax.path.as_str()),
        (3, 6, "")
    );
    assert!(!syntax.message.is_empty() && !syntax.message.ends_with('.'));
    let bad_indent = &parse("name: t\nmodel:\n  preset: tiny\n   path: x\n").unwrap_err();
    assert_eq!(bad_indent.problems()[0].line, 4);
}

#[test]
fn every_problem_is_reported_in_document_order() {
    let yaml = "\
name: t
model:
  preset: tiny
dataset:
  train: d
lora:
  r: 0
  alpha: -1
training:
  max_steps: 10
  learning_rate: 0
resources:
  workers: 0
";
    let error = parse(yaml).unwrap_err();
    assert_eq!(
        error.to_string(),
        "\
invalid job spec job.yaml (4 problems):
job.yaml:7:6: lora.r: must be between 1 and 1024, got 0
job.yaml:8:10: lora.alpha: must be greater than 0 and at most 1e6, got -1
job.yaml:11:18: training.learning_rate: must be greater than 0 and at most 10, got 0
job.yaml:13:12: resources.workers: must be between 1 and 4096, got 0"
    );
    let first = &error.problems()[0];
    assert_eq!(
        first,
        &SpecProblem {
            file: "job.yaml".into(),
            line: 7,
            column: 6,
            path: "lora.r".into(),
            message: "must be between 1 and 1024, got 0".into(),
        }
    );
    assert_eq!(
        problem("x").split_once(": ").map(|(at, _)| at),
        Some("job.yaml:1:1")
    );
}

#[test]
fn anchors_and_aliases_work_and_problems_point_at_the_use() {
    let spec = ok("\
name: t
model: {preset: tiny}
dataset: {train: d}
training: &train
  max_steps: 10
  seed: 3
lora:
  r: &rank 32
  alpha: *rank
");
    assert_eq!(spec.lora.alpha, 32.0);
    assert_eq!(spec.training.seed, 3);
    let spec = ok(&with(
        "training:\n  <<: {max_steps: 10, seed: 3}\n  seed: 4\n",
    ));
    assert_eq!(spec.training.length, TrainingLength::MaxSteps(10));
    assert_eq!(spec.training.seed, 4);
    // Problems in the value of an alias are reported where it is used.
    let found = problems(
        "name: t\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining: {max_steps: 1}\nlora:\n  alpha: &zero 0\n  dropout: *zero\n  r: *zero\n",
    );
    assert_eq!(
        found,
        [
            "job.yaml:6:16: lora.alpha: must be greater than 0 and at most 1e6, got 0",
            "job.yaml:8:6: lora.r: must be between 1 and 1024, got 0",
        ]
    );
}

// ----- paths ---------------------------------------------------------------

#[test]
fn relative_paths_resolve_against_the_spec_folder() {
    let yaml = "\
name: t
model: {path: ./models/tiny}
dataset:
  train: ../data/train.jsonl
  validation: val/./v.jsonl
lora: {init_adapter: adapters/start}
training: {max_steps: 1}
checkpoint: {storage: ../../../../runs}
output: {dir: /srv/out}
";
    let spec = JobSpec::from_yaml(yaml, "job.yaml", "/specs/sub").unwrap();
    assert_eq!(spec.model, ModelSpec::Path(path("/specs/sub/models/tiny")));
    assert_eq!(spec.dataset.train, path("/specs/data/train.jsonl"));
    assert_eq!(
        spec.dataset.validation,
        Some(Validation::Data(path("/specs/sub/val/v.jsonl")))
    );
    assert_eq!(
        spec.lora.init_adapter,
        Some(path("/specs/sub/adapters/start"))
    );
    assert_eq!(spec.checkpoint.storage, path("/runs"));
    assert_eq!(spec.output.dir, Some(path("/srv/out")));

    // With a relative base, paths stay relative to it.
    let spec = JobSpec::from_yaml(yaml, "job.yaml", "").unwrap();
    assert_eq!(spec.dataset.train, path("../data/train.jsonl"));
    assert_eq!(spec.model, ModelSpec::Path(path("models/tiny")));
}

#[test]
fn urls_are_kept_as_written() {
    for location in [
        "s3://bucket/prefix/train.jsonl",
        "gs://bucket/train.jsonl",
        "az://container/train.jsonl",
        "file:///data/train.jsonl",
        "memory://train.jsonl",
        "http://host:8080/train.jsonl",
        "https://host/a/../train.jsonl",
    ] {
        let spec = ok(&format!(
            "name: t\nmodel: {{path: \"{location}\"}}\ndataset: {{train: \"{location}\"}}\ntraining: {{max_steps: 1}}\ncheckpoint: {{storage: \"{location}\"}}\noutput: {{dir: \"{location}\"}}\n"
        ));
        assert_eq!(spec.model, ModelSpec::Path(url(location)));
        assert_eq!(spec.dataset.train, url(location));
        assert_eq!(spec.checkpoint.storage, url(location));
        assert_eq!(spec.output.dir, Some(url(location)));
        assert!(spec.dataset.train.is_url());
        assert_eq!(spec.dataset.train.as_url(), Some(location));
        assert_eq!(spec.dataset.train.to_string(), location);
    }
}

#[test]
fn bad_locations() {
    assert_eq!(
        problem(
            "name: t\nmodel: {preset: tiny}\ndataset:\n  train: hf://org/data\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:10: dataset.train: unsupported URL scheme hf://; use a local path or a URL starting with s3://, s3a://, gs://, az://, azure://, abfs://, abfss://, adl://, file://, memory://, http://, https://"
    );
    assert_eq!(
        problem(
            "name: t\nmodel: {preset: tiny}\ndataset:\n  train: \"\"\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:10: dataset.train: must not be empty"
    );
    assert_eq!(
        problem(
            "name: t\nmodel: {preset: tiny}\ndataset:\n  train: s3://\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:10: dataset.train: nothing after s3://"
    );
}

#[test]
fn from_file_reads_resolves_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, with("training:\n  max_steps: 10\n")).unwrap();
    let spec = JobSpec::from_file(&file).unwrap();
    assert_eq!(
        spec.dataset.train,
        PathOrUrl::Path(dir.path().join("train.jsonl"))
    );
    assert_eq!(
        spec.checkpoint.storage,
        PathOrUrl::Path(dir.path().join("runs"))
    );

    std::fs::write(&file, with("training:\n  max_steps: 0\n")).unwrap();
    let error = JobSpec::from_file(&file).unwrap_err();
    assert_eq!(
        error.problems()[0].to_string(),
        format!(
            "{}:7:14: training.max_steps: must be at least 1, got 0",
            file.display()
        )
    );
    assert!(error.to_string().starts_with(&format!(
        "invalid job spec {} (1 problem):\n",
        file.display()
    )));

    let missing = dir.path().join("nope.yaml");
    let error = JobSpec::from_file(&missing).unwrap_err();
    assert!(matches!(error, SpecError::Read { .. }), "{error:?}");
    assert!(error.problems().is_empty());
    assert!(
        error.to_string().starts_with("cannot read job spec "),
        "{error}"
    );
}

#[test]
fn from_file_refuses_text_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, b"name: t\nmodel: {preset: \xff}\n").unwrap();
    let error = JobSpec::from_file(&file).unwrap_err();
    assert_eq!(
        error.problems()[0].to_string(),
        format!("{}:2:17: the spec is not valid UTF-8 text", file.display())
    );
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, "#".repeat(MAX_SPEC_BYTES + 1)).unwrap();
    assert_eq!(
        JobSpec::from_file(&huge).unwrap_err().problems()[0].message,
        format!("the spec is larger than {MAX_SPEC_BYTES} bytes")
    );
}

#[test]
fn oversized_specs_are_refused() {
    let huge = format!("name: t\n# {}\n", "x".repeat(MAX_SPEC_BYTES));
    assert_eq!(
        problem(&huge),
        format!("job.yaml:1:1: the spec is larger than {MAX_SPEC_BYTES} bytes")
    );
}

// ----- writing back ----------------------------------------------------------

#[test]
fn to_yaml_round_trips() {
    let full = ok(FULL);
    let text = full.to_yaml();
    assert_eq!(
        JobSpec::from_yaml(&text, "saved.yaml", "/elsewhere").unwrap(),
        full
    );
    assert!(
        text.contains("workers: \"1..4\"")
            || text.contains("workers: '1..4'")
            || text.contains("workers: 1..4"),
        "{text}"
    );
    assert!(text.contains("warmup_ratio: 0.05"), "{text}");

    let minimal = ok(&with("training:\n  epochs: 1\n"));
    let text = minimal.to_yaml();
    assert_eq!(
        JobSpec::from_yaml(&text, "saved.yaml", "/elsewhere").unwrap(),
        minimal
    );
    assert!(text.contains("preset: tiny"), "{text}");
    assert!(text.contains("epochs: 1"), "{text}");
    assert!(!text.contains("init_adapter"), "{text}");

    for name in [
        "a: b # c",
        "yes",
        "123",
        "1.10",
        "*star",
        "- dash",
        "null",
        "~",
        "multi\u{e9}",
    ] {
        let mut spec = minimal.clone();
        spec.name = name.to_owned();
        spec.dataset.train = PathOrUrl::Path(PathBuf::from(format!("/data/{name}.jsonl")));
        let text = spec.to_yaml();
        assert_eq!(
            JobSpec::from_yaml(&text, "saved.yaml", "/x").unwrap(),
            spec,
            "{text}"
        );
    }

    let all_linear = ok(&with(
        "lora: {target_modules: all-linear}\ntraining: {max_steps: 1}\n",
    ));
    let text = all_linear.to_yaml();
    assert!(text.contains("target_modules: all-linear"), "{text}");
    assert_eq!(
        JobSpec::from_yaml(&text, "saved.yaml", "/x").unwrap(),
        all_linear
    );
}

// ----- helpers ---------------------------------------------------------------

#[test]
fn lora_scale() {
    let mut lora = ok(&with(
        "lora: {r: 16, alpha: 32}\ntraining: {max_steps: 1}\n",
    ))
    .lora;
    assert_eq!(lora.scale(), 2.0);
    lora.use_rslora = true;
    assert_eq!(lora.scale(), 8.0);
}

// ----- the example specs -------------------------------------------------------

#[test]
fn every_example_spec_parses() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let file = entry.unwrap().path();
        if matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            if let Err(error) = JobSpec::from_file(&file) {
                panic!("{error}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "no specs in {}", folder.display());
}

#[test]
fn quickstart_spec_says_what_the_docs_say() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let spec = JobSpec::from_file(root.join("configs/quickstart.yaml")).unwrap();
    assert_eq!(spec.name, "quickstart");
    assert_eq!(spec.model, ModelSpec::Preset(Preset::Tiny));
    assert_eq!(
        spec.dataset.train,
        PathOrUrl::Path(root.join("examples/data/quickstart-train.jsonl"))
    );
    assert_eq!(
        spec.dataset.validation,
        Some(Validation::Data(PathOrUrl::Path(
            root.join("examples/data/quickstart-val.jsonl")
        )))
    );
    assert_eq!(spec.dataset.format, DatasetFormat::Auto);
    assert_eq!(spec.dataset.max_seq_len, 128);
    assert_eq!((spec.lora.r, spec.lora.alpha), (16, 32.0));
    assert_eq!(spec.lora.target_modules, TargetModules::AllLinear);
    assert_eq!(spec.training.length, TrainingLength::MaxSteps(150));
    assert_eq!(spec.training.global_batch_size, 16);
    assert_eq!(spec.training.micro_batch_size, 8);
    assert_eq!(spec.training.learning_rate, 2.0e-3);
    assert_eq!(spec.training.schedule, Schedule::Cosine);
    assert_eq!(spec.training.warmup, Warmup::Steps(10));
    assert_eq!(spec.training.eval_every, 25);
    assert_eq!(spec.training.seed, 42);
    assert_eq!(spec.resources.workers, Workers::fixed(1));
    assert_eq!(spec.resources.backend, Backend::Cpu);
    assert_eq!(spec.resources.threads_per_worker, 2);
    assert_eq!(spec.checkpoint.every_steps, 50);
    assert_eq!(spec.checkpoint.keep_last, 2);
    assert_eq!(spec.checkpoint.storage, PathOrUrl::Path(root.join("runs")));
    assert_eq!(
        spec.output.dir,
        Some(PathOrUrl::Path(root.join("runs/quickstart/final")))
    );
}

#[test]
fn every_count_has_an_upper_bound_checked_at_its_line() {
    let huge = "18446744073709551615";
    for (section, key, bound) in [
        ("training", "max_steps", "at most 1000000000"),
        ("training", "warmup_steps", "at most 1000000000"),
        ("training", "eval_every", "at most 1000000000"),
        ("training", "global_batch_size", "at most 1048576"),
        ("training", "micro_batch_size", "at most 1048576"),
        ("checkpoint", "every_steps", "at most 1000000000"),
        ("checkpoint", "keep_last", "at most 10000"),
        ("dataset", "max_seq_len", "at most 1048576"),
    ] {
        let yaml = match section {
            "training" if key == "max_steps" => with(&format!("training:\n  max_steps: {huge}\n")),
            "training" => with(&format!("training:\n  max_steps: 10\n  {key}: {huge}\n")),
            "dataset" => format!("{BASE}  {key}: {huge}\ntraining:\n  max_steps: 10\n"),
            other => with(&format!(
                "training:\n  max_steps: 10\n{other}:\n  {key}: {huge}\n"
            )),
        };
        let problem = problem(&yaml);
        assert!(
            problem.ends_with(&format!("{section}.{key}: must be {bound}, got {huge}")),
            "{problem}"
        );
    }
    for (key, value, message) in [
        ("epochs", "1000000", "must be at most 100000, got 1000000"),
        (
            "max_failures",
            "5000",
            "must be between 0 and 1000, got 5000",
        ),
    ] {
        let text = if key == "epochs" {
            format!("training:\n  epochs: {value}\n")
        } else {
            format!("training:\n  max_steps: 10\ncheckpoint:\n  {key}: {value}\n")
        };
        let problem = problem(&with(&text));
        assert!(problem.ends_with(message), "{problem}");
    }
}

#[test]
fn every_bound_is_inclusive_and_one_past_it_is_refused() {
    let cases = [
        ("training", "max_steps", limits::STEPS),
        ("training", "warmup_steps", limits::STEPS),
        ("training", "eval_every", limits::STEPS),
        ("training", "global_batch_size", limits::BATCH),
        ("training", "micro_batch_size", limits::BATCH),
        ("checkpoint", "every_steps", limits::STEPS),
        ("checkpoint", "keep_last", limits::KEEP_LAST),
        ("checkpoint", "max_failures", limits::MAX_FAILURES),
        ("dataset", "max_seq_len", limits::SEQ_LEN),
        ("lora", "r", limits::RANK),
        ("resources", "threads_per_worker", limits::THREADS),
    ];
    // Validation data, so that `eval_every` is allowed.
    let base = format!("{BASE}  validation_fraction: 0.1\n");
    let yaml = |section: &str, key: &str, value: i128| {
        let entry = format!("  {key}: {value}\n");
        match section {
            "dataset" => format!("{base}{entry}training:\n  max_steps: 10\n"),
            "training" if key == "max_steps" => format!("{base}training:\n{entry}"),
            "training" => format!("{base}training:\n  max_steps: 10\n{entry}"),
            other => format!("{base}training:\n  max_steps: 10\n{other}:\n{entry}"),
        }
    };
    for (section, key, most) in cases {
        // The global batch must split over micro-batches: a batch of
        // `most` samples is given with micro-batches of one.
        ok(&yaml(section, key, most));
        let problem = problem(&yaml(section, key, most + 1));
        assert!(
            problem.contains(&format!("{section}.{key}: must be "))
                && problem.contains(&most.to_string())
                && problem.ends_with(&format!("got {}", most + 1)),
            "{problem}"
        );
    }
    // Epochs and the other bounds of their own.
    ok(&with(&format!("training:\n  epochs: {}\n", limits::EPOCHS)));
    assert!(
        problem(&with(&format!(
            "training:\n  epochs: {}\n",
            limits::EPOCHS + 1
        )))
        .ends_with("training.epochs: must be at most 100000, got 100001")
    );
    ok(&with(
        "training:\n  max_steps: 10\nresources:\n  workers: 4096\n  priority: -2147483648\n  threads_per_worker: 1\ncheckpoint:\n  max_failures: 0\n",
    ));
    assert!(
        problem(&with(
            "training:\n  max_steps: 10\nresources:\n  workers: 4097\n"
        ))
        .ends_with("resources.workers: must be between 1 and 4096, got 4097")
    );
    assert!(
        problem(&with(
            "training:\n  max_steps: 10\nresources:\n  priority: 2147483648\n"
        ))
        .ends_with("resources.priority: must be at most 2147483647, got 2147483648")
    );
}

#[test]
fn numbers_that_are_no_integer_are_told_the_bounds() {
    // Past i128 a number is read as a float; `1e30` is one.
    for value in ["1e30", "1000000000000000000000000000000000000000000", "2.5"] {
        let problem = problem(&with(&format!("training:\n  max_steps: {value}\n")));
        assert!(
            problem
                .contains("training.max_steps: expected an integer between 1 and 1000000000, got "),
            "{problem}"
        );
    }
}

#[test]
fn a_seed_takes_any_u64() {
    let spec = ok(&with(&format!(
        "training:\n  max_steps: 10\n  seed: {}\n",
        u64::MAX
    )));
    assert_eq!(spec.training.seed, u64::MAX);
    assert_eq!(parse(&spec.to_yaml()).unwrap().training.seed, u64::MAX);
    let problem = problem(&with(&format!(
        "training:\n  max_steps: 10\n  seed: {}\n",
        u128::from(u64::MAX) + 1
    )));
    assert!(
        problem.ends_with(
            "training.seed: expected an integer between 0 and 18446744073709551615, got 1.8446744073709552e19"
        ),
        "{problem}"
    );
}

// ----- model.dtype -------------------------------------------------------------

#[test]
fn model_dtype_is_f32_bf16_or_f16_and_absent_by_default() {
    let yaml = |model: &str| {
        format!("name: t\nmodel:\n{model}dataset:\n  train: d\ntraining:\n  max_steps: 1\n")
    };
    assert_eq!(ok(&yaml("  preset: tiny\n")).model_dtype, None);
    for (text, want) in [
        ("f32", ModelDType::F32),
        ("bf16", ModelDType::Bf16),
        ("f16", ModelDType::F16),
    ] {
        let spec = ok(&yaml(&format!("  preset: tiny\n  dtype: {text}\n")));
        assert_eq!(spec.model_dtype, Some(want));
        assert_eq!(spec.model, ModelSpec::Preset(Preset::Tiny));
        // Written back as `model.dtype`, and read back the same.
        let saved = spec.to_yaml();
        assert!(saved.contains(&format!("dtype: {text}")), "{saved}");
        assert_eq!(
            JobSpec::from_yaml(&saved, "saved.yaml", "/x").unwrap(),
            spec
        );
    }
    // With a path, before it, and empty (the default).
    let spec = ok(&yaml("  dtype: bf16\n  path: models/m\n"));
    assert_eq!(spec.model, ModelSpec::Path(path("/specs/models/m")));
    assert_eq!(spec.model_dtype, Some(ModelDType::Bf16));
    assert_eq!(ok(&yaml("  preset: tiny\n  dtype:\n")).model_dtype, None);
    // Not given: not written either.
    assert!(!ok(&yaml("  preset: tiny\n")).to_yaml().contains("dtype"));
}

#[test]
fn a_misspelt_model_dtype_gets_a_suggestion_at_its_value() {
    assert_eq!(
        problem(
            "name: t\nmodel:\n  preset: tiny\n  dtype: bf61\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:10: model.dtype: unknown value \"bf61\"; did you mean bf16? allowed: f32, bf16, f16"
    );
    assert_eq!(
        problem(
            "name: t\nmodel: {preset: tiny, dtype: fp32}\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:2:30: model.dtype: unknown value \"fp32\"; did you mean f32? allowed: f32, bf16, f16"
    );
    // The key misspelt, and a familiar word for it.
    assert_eq!(
        problem(
            "name: t\nmodel:\n  preset: tiny\n  dtpye: bf16\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:3: model.dtpye: unknown key; did you mean dtype? allowed keys: path, preset, dtype"
    );
    assert_eq!(
        problem(
            "name: t\nmodel:\n  preset: tiny\n  torch_dtype: bf16\ndataset: {train: d}\ntraining: {max_steps: 1}\n"
        ),
        "job.yaml:4:3: model.torch_dtype: unknown key; did you mean dtype? allowed keys: path, preset, dtype"
    );
    // Alone, it does not say where the weights come from.
    let found =
        problems("name: t\nmodel:\n  dtype: bf16\ndataset: {train: d}\ntraining: {max_steps: 1}\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("model: missing; set model.path"),
        "{}",
        found[0]
    );
}

#[test]
fn model_dtype_can_be_overridden_on_the_command_line() {
    let text = "name: t\nmodel:\n  preset: tiny\ndataset: {train: d}\ntraining: {max_steps: 1}\n";
    let loaded = JobSpec::from_yaml_with_overrides(
        text,
        "job.yaml",
        "/specs",
        &["model.dtype=f16"],
        Path::new("/cwd"),
    )
    .unwrap();
    assert_eq!(loaded.spec.model_dtype, Some(ModelDType::F16));
}

// ----- training.gradient_checkpointing ------------------------------------------

#[test]
fn gradient_checkpointing_is_off_by_default_and_written_back_only_when_on() {
    let base = "name: t\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining:\n  max_steps: 1\n";
    let off = ok(base);
    assert!(!off.training.gradient_checkpointing);
    assert!(!off.to_yaml().contains("gradient_checkpointing"));
    let on = ok(&format!("{base}  gradient_checkpointing: true\n"));
    assert!(on.training.gradient_checkpointing);
    let saved = on.to_yaml();
    assert!(saved.contains("gradient_checkpointing: true"), "{saved}");
    assert_eq!(ok(&saved), on);
    // torchtune's spelling is read as the same key.
    let torchtune = ok(&format!("{base}  enable_activation_checkpointing: true\n"));
    assert!(torchtune.training.gradient_checkpointing);
}

#[test]
fn a_gradient_checkpointing_that_is_not_a_boolean_is_located() {
    let base = "name: t\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining:\n  max_steps: 1\n";
    assert_eq!(
        problem(&format!("{base}  gradient_checkpointing: 1\n")),
        "job.yaml:6:27: training.gradient_checkpointing: expected true or false, got 1"
    );
    assert_eq!(
        problem(&format!("{base}  gradient_checkpionting: true\n")),
        "job.yaml:6:3: training.gradient_checkpionting: unknown key; did you mean gradient_checkpointing? allowed keys: max_steps, epochs, global_batch_size, micro_batch_size, learning_rate, schedule, warmup_steps, warmup_ratio, weight_decay, max_grad_norm, eval_every, seed, adam_beta1, adam_beta2, adam_epsilon, gradient_checkpointing"
    );
}
