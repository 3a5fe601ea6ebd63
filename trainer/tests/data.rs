//! Integration tests of `trainer::data`: real JSONL files read through
//! object_store (local paths, `file://` URLs, an in-memory store), tokenized
//! with the byte-level tokenizer of the `tiny` models (ids 0
//! `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>` = EOS, byte `b` is
//! `b + 3`), so every id and mask can be checked exactly; the sampler's
//! distribution rules; the shipped quickstart dataset; long records (the
//! size limit, and cutting before tokenizing, checked against a BPE
//! tokenizer with merges). Not here: unit tests of single functions
//! (beside the code).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use trainer::data::format::{encode_sample, fit_to_budget, text_bytes, tokenized_text_budget};
use trainer::data::reading::TOKENIZED_BYTES_AT_ONCE;
use trainer::data::source::MAX_RECORD_BYTES;
use trainer::data::{
    DataError, DataOptions, DataSource, DatasetConfig, Format, MAX_PROBLEMS, RawSample, Sampler,
    Shape, TokenizedDataset, Validation, check_records, load_dataset, load_datasets, pad_id,
};
use trainer::tokenizer::{ChatMessage, TextTokenizer};

/// The byte-level ids of `s`.
fn b(s: &str) -> Vec<u32> {
    s.bytes().map(|x| x as u32 + 3).collect()
}

const START: u32 = 1;
const END: u32 = 2;

fn options() -> DataOptions {
    DataOptions {
        max_seq_len: 4096,
        ..DataOptions::default()
    }
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

fn load_str(content: &str, options: &DataOptions) -> Result<TokenizedDataset, DataError> {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", content);
    let source = DataSource::parse(&file).unwrap();
    load_dataset(&source, &TextTokenizer::init_model_default(), options)
}

/// Loads `content` from a file named `d.jsonl` and returns the error text
/// with the temporary folder taken out of it.
fn load_err(content: &str, options: &DataOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", content);
    let source = DataSource::parse(&file).unwrap();
    let err = load_dataset(&source, &TextTokenizer::init_model_default(), options).unwrap_err();
    err.to_string().replace(&file, "d.jsonl")
}

/// The targets of a sample as a list of (id, is_target).
fn masked(ds: &TokenizedDataset, i: usize) -> Vec<(u32, bool)> {
    let s = ds.get(i);
    s.input_ids
        .iter()
        .copied()
        .zip(s.target_mask.iter().copied())
        .collect()
}

/// Expected (id, is_target) pairs from pieces.
fn expect(pieces: &[(Vec<u32>, bool)]) -> Vec<(u32, bool)> {
    let mut out: Vec<(u32, bool)> = pieces
        .iter()
        .flat_map(|(ids, t)| ids.iter().map(move |&id| (id, *t)))
        .collect();
    out[0].1 = false;
    out
}

#[test]
fn text_shape_targets_every_token_and_eos() {
    let ds = load_str("{\"text\": \"hi there\"}\n", &options()).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(
        masked(&ds, 0),
        expect(&[(b("hi there"), true), (vec![END], true)])
    );
    assert!(!ds.get(0).target_mask[0], "position 0 is never a target");
    let stats = ds.stats();
    assert_eq!(stats.shape, Some(Shape::Text));
    assert_eq!(
        (stats.samples, stats.tokens, stats.target_tokens),
        (1, 9, 8)
    );
}

#[test]
fn completion_shape_masks_the_prompt() {
    let ds = load_str(
        "{\"prompt\": \"Reverse: cat\\n\", \"completion\": \"tac\"}\n",
        &options(),
    )
    .unwrap();
    assert_eq!(
        masked(&ds, 0),
        expect(&[
            (b("Reverse: cat\n"), false),
            (b("tac"), true),
            (vec![END], true)
        ])
    );
    assert_eq!(ds.stats().target_tokens, 4);
}

#[test]
fn chat_shape_trains_only_on_assistant_turns() {
    let line = r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "r"}, {"role": "assistant", "content": "a2"}]}"#;
    let ds = load_str(line, &options()).unwrap();
    assert_eq!(
        masked(&ds, 0),
        expect(&[
            (vec![START], false),
            (b("system\nS"), false),
            (vec![END], false),
            (b("\n"), false),
            (vec![START], false),
            (b("user\nq"), false),
            (vec![END], false),
            (b("\n"), false),
            (vec![START], false),
            (b("assistant\n"), false),
            // The assistant's content and the <|im_end|> closing it are targets…
            (b("a1"), true),
            (vec![END], true),
            // …the newline the template writes after it is not.
            (b("\n"), false),
            (vec![START], false),
            (b("user\nr"), false),
            (vec![END], false),
            (b("\n"), false),
            (vec![START], false),
            (b("assistant\n"), false),
            (b("a2"), true),
            (vec![END], true),
            (b("\n"), false),
        ])
    );
}

#[test]
fn chat_without_system_gets_the_templates_default_and_it_is_masked() {
    let line = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let ds = load_str(line, &options()).unwrap();
    let s = ds.get(0);
    let targets: Vec<u32> = s
        .input_ids
        .iter()
        .zip(&s.target_mask)
        .filter(|(_, t)| **t)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(targets, [b("a"), vec![END]].concat());
    let text = TextTokenizer::init_model_default()
        .decode(&s.input_ids, false)
        .unwrap();
    assert!(text.starts_with("<|im_start|>system\nYou are a helpful AI assistant."));
}

#[test]
fn train_on_inputs_unmasks_prompts_and_turns() {
    let opts = DataOptions {
        train_on_inputs: true,
        ..options()
    };
    let ds = load_str("{\"prompt\": \"p\", \"completion\": \"c\"}\n", &opts).unwrap();
    assert_eq!(
        masked(&ds, 0),
        expect(&[(b("pc"), true), (vec![END], true)])
    );
    let chat = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let ds = load_str(chat, &opts).unwrap();
    let s = ds.get(0);
    assert!(!s.target_mask[0]);
    assert!(
        s.target_mask[1..].iter().all(|&t| t),
        "every token but the first"
    );
}

#[test]
fn a_tokenizer_without_eos_appends_none_and_one_without_template_refuses_chat() {
    let tok = TextTokenizer::byte_level(&["<|endoftext|>"], &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = DataSource::parse(&write(dir.path(), "t.jsonl", "{\"text\": \"ab\"}\n")).unwrap();
    let ds = load_dataset(&text, &tok, &options()).unwrap();
    assert_eq!(ds.get(0).input_ids, [98, 99], "ids shift by one special");
    let chat = write(
        dir.path(),
        "c.jsonl",
        "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}\n",
    );
    let err = load_dataset(&DataSource::parse(&chat).unwrap(), &tok, &options()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{chat}: chat samples need a chat template, and the model's tokenizer has none")
    );
}

#[test]
fn truncation_is_counted_and_samples_without_targets_are_dropped() {
    let opts = DataOptions {
        max_seq_len: 6,
        ..options()
    };
    let content = concat!(
        "{\"prompt\": \"ab\", \"completion\": \"cdefgh\"}\n", // 2 + 6 + EOS: truncated
        "{\"prompt\": \"abcdefgh\", \"completion\": \"x\"}\n", // prompt fills it: dropped
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n",       // fits
    );
    let ds = load_str(content, &opts).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(
        masked(&ds, 0),
        expect(&[(b("ab"), false), (b("cdef"), true)])
    );
    let stats = ds.stats();
    assert_eq!(stats.truncated, 1);
    assert_eq!(stats.dropped_without_targets, 1);
    assert_eq!(stats.longest, 6);

    let err = load_err("{\"prompt\": \"abcdefgh\", \"completion\": \"x\"}\n", &opts);
    assert_eq!(
        err,
        "d.jsonl: empty dataset (no sample has a target token left at max_seq_len 6)"
    );
}

#[test]
fn packing_fills_rows_greedily_in_file_order_and_keeps_masks() {
    let opts = DataOptions {
        max_seq_len: 8,
        packing: true,
        ..options()
    };
    // Each sample is its text plus EOS.
    let content =
        "{\"text\": \"abc\"}\n{\"text\": \"de\"}\n{\"text\": \"fghi\"}\n{\"text\": \"j\"}\n";
    let ds = load_str(content, &opts).unwrap();
    assert_eq!(ds.len(), 2);
    let row0 = ds.get(0);
    assert_eq!(
        row0.input_ids,
        [b("abc"), vec![END], b("de"), vec![END]].concat()
    );
    assert_eq!(
        row0.target_mask,
        [false, true, true, true, false, true, true]
    );
    assert_eq!(row0.segment_starts, [0, 4]);
    assert_eq!(
        ds.get(1).input_ids,
        [b("fghi"), vec![END], b("j"), vec![END]].concat()
    );
    let stats = ds.stats();
    assert_eq!((stats.samples, stats.source_samples), (2, 4));
}

#[test]
fn held_out_fraction_is_deterministic_and_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let content: String = (0..50)
        .map(|i| format!("{{\"text\": \"line {i:02}\"}}\n"))
        .collect();
    let file = write(dir.path(), "d.jsonl", &content);
    let tok = TextTokenizer::init_model_default();
    let load = |seed: u64| {
        let config = DatasetConfig {
            train: DataSource::parse(&file).unwrap(),
            validation: Validation::Fraction(0.2),
            options: options(),
            seed,
        };
        let sets = load_datasets(&config, &tok).unwrap();
        let texts = |ds: &TokenizedDataset| -> Vec<String> {
            ds.samples()
                .iter()
                .map(|s| tok.decode(&s.input_ids, true).unwrap())
                .collect()
        };
        (texts(&sets.train), texts(&sets.validation.unwrap()))
    };
    let (train, val) = load(3);
    assert_eq!((train.len(), val.len()), (40, 10));
    assert_eq!(
        load(3),
        (train.clone(), val.clone()),
        "same seed, same split"
    );
    assert_ne!(load(4).1, val, "another seed, another split");
    let train_set: BTreeSet<&String> = train.iter().collect();
    assert!(val.iter().all(|v| !train_set.contains(v)), "disjoint");
    let all: BTreeSet<&String> = train.iter().chain(&val).collect();
    assert_eq!(all.len(), 50, "together they are the whole file");
}

#[test]
fn a_validation_file_is_loaded_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(
        dir.path(),
        "t.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
    );
    let val = write(
        dir.path(),
        "v.jsonl",
        "{\"prompt\": \"x\", \"completion\": \"y\"}\n",
    );
    let config = DatasetConfig {
        train: DataSource::parse(&train).unwrap(),
        validation: Validation::Source(DataSource::parse(&val).unwrap()),
        options: options(),
        seed: 0,
    };
    let sets = load_datasets(&config, &TextTokenizer::init_model_default()).unwrap();
    assert_eq!(sets.train.len(), 2);
    let val = sets.validation.unwrap();
    assert_eq!(val.stats().shape, Some(Shape::Completion));
}

#[test]
fn every_bad_line_is_reported_with_file_and_line() {
    let content = [
        r#"{"text": "fine"}"#,                                      // 1
        r#"{"text": "#,                                             // 2
        r#"["text"]"#,                                              // 3
        r#"{"input": "x"}"#,                                        // 4
        r#"{"prompt": "p", "completion": "c"}"#,                    // 5
        r#"{"text": ""}"#,                                          // 6
        "",                                                         // 7 (blank: skipped)
        r#"{"text": 3}"#,                                           // 8
        r#"{"messages": [{"role": "assistant", "content": "a"}]}"#, // 9
    ]
    .join("\n");
    assert_eq!(
        load_err(&content, &options()),
        [
            "d.jsonl:2: not JSON: EOF while parsing a value at column 9",
            "d.jsonl:3: not a JSON object (got a list)",
            "d.jsonl:4: unknown shape: expected a \"text\", \"prompt\" and \"completion\", \"messages\", \"instruction\" and \"output\", or \"conversations\" key (keys: input)",
            "d.jsonl:5: mixed shapes: this line is completion, line 1 is text (use one shape per file)",
            "d.jsonl:6: \"text\" is empty",
            "d.jsonl:8: \"text\" is not a string (got a number)",
            "d.jsonl:9: mixed shapes: this line is chat, line 1 is text (use one shape per file)",
        ]
        .join("\n")
    );
}

#[test]
fn chat_lines_are_checked() {
    let content = [
        r#"{"messages": [{"role": "user", "content": "q"}]}"#,
        r#"{"messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        r#"{"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}"#,
        r#"{"messages": "hello"}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, "a"]}"#,
        r#"{"messages": []}"#,
    ]
    .join("\n");
    assert_eq!(
        load_err(&content, &options()),
        [
            "d.jsonl:1: conversation has no assistant turn",
            "d.jsonl:2: messages[0].role \"tool\" is not system, user or assistant",
            "d.jsonl:3: messages[0].content is not a string (got a list)",
            "d.jsonl:4: \"messages\" is not a list (got a string)",
            "d.jsonl:5: messages[1] is not an object (got a string)",
            "d.jsonl:6: \"messages\" is empty",
        ]
        .join("\n")
    );
}

#[test]
fn a_forced_format_names_itself() {
    let opts = DataOptions {
        format: Format::Completion,
        ..options()
    };
    assert_eq!(
        load_err("{\"text\": \"x\"}\n{\"prompt\": \"p\"}\n", &opts),
        "d.jsonl:1: no \"prompt\" key (format: completion)\nd.jsonl:2: no \"completion\" key (format: completion)"
    );
    assert_eq!("chat".parse::<Format>().unwrap(), Format::Chat);
    assert_eq!(
        "jsonl".parse::<Format>().unwrap_err().to_string(),
        "format: must be auto, text, completion, chat, alpaca or sharegpt, got \"jsonl\""
    );
}

#[test]
fn loading_stops_after_max_problems() {
    let content = "nope\n".repeat(MAX_PROBLEMS + 5);
    let err = load_err(&content, &options());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), MAX_PROBLEMS + 1);
    assert_eq!(lines[0], "d.jsonl:1: not JSON: expected ident at column 2");
    assert_eq!(
        lines[MAX_PROBLEMS],
        format!("d.jsonl: stopped after {MAX_PROBLEMS} problems; the file may hold more")
    );
}

#[test]
fn an_empty_dataset_names_the_file() {
    assert_eq!(
        load_err("", &options()),
        "d.jsonl: empty dataset (no non-blank lines)"
    );
    assert_eq!(
        load_err("\n  \n\r\n", &options()),
        "d.jsonl: empty dataset (no non-blank lines)"
    );
}

#[test]
fn crlf_bom_and_a_last_line_without_newline_are_fine() {
    let ds = load_str("\u{feff}{\"text\": \"a\"}\r\n{\"text\": \"b\"}", &options()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(1).input_ids, [b("b"), vec![END]].concat());
}

#[test]
fn reads_through_object_store_local_file_url_and_memory() {
    let tok = TextTokenizer::init_model_default();
    let content = "{\"text\": \"one\"}\n{\"text\": \"two\"}\n";
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", content);

    let local = load_dataset(&DataSource::parse(&file).unwrap(), &tok, &options()).unwrap();
    let url = format!("file://{file}");
    let by_url = load_dataset(&DataSource::parse(&url).unwrap(), &tok, &options()).unwrap();
    assert_eq!(local.samples(), by_url.samples());
    assert_eq!(by_url.name(), url);

    let store = Arc::new(InMemory::new());
    let path = StorePath::from("datasets/d.jsonl");
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(store.put(&path, content.as_bytes().to_vec().into()))
        .unwrap();
    let source = DataSource::from_store(store, path, "memory://datasets/d.jsonl");
    let in_memory = load_dataset(&source, &tok, &options()).unwrap();
    assert_eq!(in_memory.samples(), local.samples());

    // A fresh `memory://` store from a URL is empty: the object is not found.
    let err = load_dataset(
        &DataSource::parse("memory:///datasets/d.jsonl").unwrap(),
        &tok,
        &options(),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "memory:///datasets/d.jsonl: not found");

    let missing = dir.path().join("missing.jsonl");
    let missing = missing.to_str().unwrap();
    let err = load_dataset(&DataSource::parse(missing).unwrap(), &tok, &options()).unwrap_err();
    assert_eq!(err.to_string(), format!("{missing}: not found"));
}

#[test]
fn reading_streams_many_chunks_and_long_lines() {
    // Larger than one 8 KiB read and one parallel chunk of lines, with a
    // line longer than a read.
    let long = "x".repeat(20_000);
    let mut content = format!("{{\"text\": \"{long}\"}}\n");
    for i in 0..3000 {
        content.push_str(&format!("{{\"text\": \"sample {i}\"}}\n"));
    }
    let opts = DataOptions {
        max_seq_len: 30_000,
        ..options()
    };
    let ds = load_str(&content, &opts).unwrap();
    assert_eq!(ds.len(), 3001);
    assert_eq!(ds.get(0).len(), 20_001);
    assert_eq!(
        ds.get(3000).input_ids,
        [b("sample 2999"), vec![END]].concat()
    );
}

#[test]
fn sampler_orders_are_seeded_per_epoch() {
    let s = Sampler::new(100, 10, 42).unwrap();
    let again = Sampler::new(100, 10, 42).unwrap();
    assert_eq!(s.epoch_order(0), again.epoch_order(0));
    assert_ne!(s.epoch_order(0), s.epoch_order(1));
    assert_ne!(
        s.epoch_order(0),
        Sampler::new(100, 10, 43).unwrap().epoch_order(0)
    );
    let mut sorted = (*s.epoch_order(3)).clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "a permutation");
    // One epoch of steps draws every sample once.
    let drawn: BTreeSet<usize> = (0..s.steps_per_epoch())
        .flat_map(|st| s.global_batch(st))
        .collect();
    assert_eq!(drawn.len(), 100);
}

#[test]
fn sampler_drops_the_last_partial_batch_of_each_epoch() {
    let s = Sampler::new(10, 3, 1).unwrap();
    assert_eq!(s.steps_per_epoch(), 3);
    assert_eq!(s.epoch_of(2), 0);
    assert_eq!(s.epoch_of(3), 1);
    let epoch1 = s.epoch_order(1);
    assert_eq!(s.global_batch(3), epoch1[0..3]);
    assert!(s.global_batch_refs(3).iter().all(|r| r.epoch == 1));
    assert_eq!(
        Sampler::new(4, 5, 0).unwrap_err().to_string(),
        "global batch size 5 is larger than the dataset (4 samples)"
    );
}

#[test]
fn ranks_shares_partition_the_global_batch() {
    let g = 12;
    let s = Sampler::new(50, g, 9).unwrap();
    for world in 1..=4 {
        assert_eq!(g % world, 0);
        for step in 0..10 {
            let global = s.global_batch_refs(step);
            let mut union = Vec::new();
            for rank in 0..world {
                let share = s.rank_share_refs(step, rank, world);
                assert_eq!(share.len(), g / world);
                assert!(share.iter().all(|r| r.position % world == rank));
                union.extend(share);
            }
            union.sort_by_key(|r| r.position);
            assert_eq!(union, global, "world {world}, step {step}");
        }
    }
}

#[test]
fn one_rank_and_two_ranks_train_on_the_same_global_batches() {
    let tok = TextTokenizer::init_model_default();
    let content: String = (0..40)
        .map(|i| format!("{{\"text\": \"s{i}\"}}\n"))
        .collect();
    let ds = load_str(&content, &options()).unwrap();
    let (g, micro) = (8, 2);
    let one = Sampler::new(ds.len(), g, 5).unwrap();
    let two = Sampler::new(ds.len(), g, 5).unwrap();
    for step in 0..12 {
        let solo: Vec<_> = one.micro_batches(step, 0, 1, micro).concat();
        let mut pair: Vec<_> = (0..2)
            .flat_map(|r| two.micro_batches(step, r, 2, micro).concat())
            .collect();
        pair.sort_by_key(|r| r.position);
        assert_eq!(solo, pair, "step {step}");
        // The loss denominator: the whole global batch's targets, however split.
        let denominator = ds.targets_in(&one.global_batch(step));
        let summed: usize = (0..2)
            .flat_map(|r| two.micro_batches(step, r, 2, micro))
            .map(|mb| ds.batch(&mb, pad_id(&tok)).num_targets())
            .sum();
        assert_eq!(summed, denominator);
    }
}

#[test]
fn batches_pad_with_bos_and_mask_padding() {
    let ds = load_str("{\"text\": \"abc\"}\n{\"text\": \"d\"}\n", &options()).unwrap();
    let s = Sampler::new(2, 2, 0).unwrap();
    let refs = s.global_batch_refs(0);
    let batch = ds.batch(&refs, pad_id(&TextTokenizer::init_model_default()));
    assert_eq!((batch.rows, batch.seq_len), (2, 4));
    for (r, sample_ref) in refs.iter().enumerate() {
        let sample = ds.get(sample_ref.index);
        let row = batch.row(r);
        assert_eq!(
            &row[..sample.len()],
            sample
                .input_ids
                .iter()
                .map(|&i| i as i64)
                .collect::<Vec<_>>()
        );
        assert!(
            row[sample.len()..].iter().all(|&p| p == 0),
            "padded with BOS (0)"
        );
        let mask = &batch.target_mask[r * 4..(r + 1) * 4];
        assert_eq!(mask[0], 0.0);
        assert!(mask[sample.len()..].iter().all(|&m| m == 0.0));
    }
    assert_eq!(batch.num_targets(), 3 + 1);
    assert_eq!(batch.sample_ids, refs);
}

fn quickstart(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data")
        .join(name)
}

#[test]
fn the_quickstart_dataset_loads_and_is_disjoint() {
    let tok = TextTokenizer::init_model_default();
    let opts = DataOptions {
        max_seq_len: 256,
        ..options()
    };
    let load = |name: &str| {
        let path = quickstart(name);
        load_dataset(
            &DataSource::parse(path.to_str().unwrap()).unwrap(),
            &tok,
            &opts,
        )
        .unwrap()
    };
    let train = load("quickstart-train.jsonl");
    let val = load("quickstart-val.jsonl");
    for ds in [&train, &val] {
        let stats = ds.stats();
        assert_eq!(stats.shape, Some(Shape::Completion));
        assert_eq!(stats.truncated, 0);
        assert!(stats.longest <= 64, "short samples, got {}", stats.longest);
    }
    assert!(train.len() >= 1500 && val.len() >= 150);
    assert!(train.stats().steps_per_epoch(16) >= 90);
    let prompt = |s: &trainer::data::TokenizedSample| -> Vec<u32> {
        s.input_ids
            .iter()
            .zip(&s.target_mask)
            .take_while(|(_, t)| !**t)
            .map(|(id, _)| *id)
            .collect()
    };
    let train_prompts: BTreeSet<Vec<u32>> = train.samples().iter().map(prompt).collect();
    assert!(
        val.samples()
            .iter()
            .all(|s| !train_prompts.contains(&prompt(s)))
    );
}

// ---- Long records: the size limit, and cutting before tokenizing ----

/// A GPT-2 style byte-level BPE whose tokens stand for 1 to 64 bytes (runs
/// of spaces, `a` and `-` merged up to 64, a few words), with ChatML
/// specials and template, BOS before a prompt and `<|im_end|>` as EOS: a
/// tokenizer where a token's text depends on its neighbours, unlike the
/// one-token-per-byte tokenizer of the `tiny` models.
fn bpe_tokenizer() -> TextTokenizer {
    use std::collections::HashMap;
    use trainer::tokenizer::{CHATML_TEMPLATE, byte_level_parts, byte_symbol};
    let symbols =
        |s: &str| -> Vec<String> { s.bytes().map(|b| byte_symbol(b).to_string()).collect() };
    let mut merges: Vec<(String, String)> = Vec::new();
    for c in [" ", "a", "-"] {
        let mut run = symbols(c).concat();
        while run.chars().count() < 64 {
            merges.push((run.clone(), run.clone()));
            run = run.repeat(2);
        }
    }
    for word in [" the", " word", "é", "ing", " lo", "ng", "12"] {
        let parts = symbols(word);
        let mut merged = parts[0].clone();
        for part in &parts[1..] {
            merges.push((merged.clone(), part.clone()));
            merged.push_str(part);
        }
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let names = specials
        .iter()
        .map(|s| s.to_string())
        .chain((0..=255u8).map(|b| byte_symbol(b).to_string()))
        .chain(merges.iter().map(|(a, b)| format!("{a}{b}")));
    for name in names {
        let id = vocab.len() as u32;
        vocab.entry(name).or_insert(id);
    }
    let mut parts = byte_level_parts(vocab, merges, &specials).unwrap();
    parts.bos = Some(0);
    parts.eos = Some(2);
    parts.add_bos = true;
    parts.chat_template = Some(CHATML_TEMPLATE.to_string());
    TextTokenizer::from_parts(parts)
}

/// `bytes` of varied text: words the merges know and do not, runs of
/// spaces, letters and dashes of 1 to 200 bytes, digits, newlines, `é`.
fn varied_text(bytes: usize, seed: u64) -> String {
    let mut state = seed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut text = String::with_capacity(bytes + 256);
    while text.len() < bytes {
        let run = 1 + next(200) as usize;
        match next(9) {
            0 => text.push_str(" the"),
            1 => text.push_str(" word"),
            2 => text.push_str(&" ".repeat(run)),
            3 => text.push_str(&"a".repeat(run)),
            4 => text.push_str(&"-".repeat(run)),
            5 => text.push_str(" lo-ng éé1234"),
            6 => text.push('\n'),
            7 => text.push_str("ing"),
            _ => text.push_str(" xyzzy"),
        }
    }
    text
}

/// Tokenizing all of `raw`, then truncating to `max_seq_len`: what
/// cutting before tokenizing must give.
fn whole_then_truncated(
    raw: &RawSample,
    tok: &TextTokenizer,
    options: &DataOptions,
) -> trainer::data::format::Encoded {
    let whole = DataOptions {
        max_seq_len: usize::MAX / 2,
        ..*options
    };
    let mut e = encode_sample(raw.clone(), tok, &whole).unwrap();
    e.truncated = e.sample.len() > options.max_seq_len;
    e.sample.input_ids.truncate(options.max_seq_len);
    e.sample.target_mask.truncate(options.max_seq_len);
    e
}

#[test]
fn cutting_before_tokenizing_gives_the_same_samples_with_a_bpe_tokenizer() {
    let tok = bpe_tokenizer();
    let max_seq_len = 64;
    let budget = tokenized_text_budget(max_seq_len);
    let long = varied_text(3 * budget, 1);
    let turn = |role: &str, content: &str| ChatMessage::new(role, content);
    let prefix = |n: usize| -> &str {
        let mut end = n;
        while !long.is_char_boundary(end) {
            end -= 1;
        }
        &long[..end]
    };
    let completion = |prompt: &str, completion: &str| RawSample::Completion {
        prompt: prompt.into(),
        completion: completion.into(),
    };
    let cases = [
        RawSample::Text(long.clone()),
        completion("Summarize: ", &long),
        completion(&long, "a summary"),
        // The prompt ends just inside the budget; the completion gets the rest.
        completion(prefix(budget - 10), &long),
        completion(prefix(budget - 20_000), &long),
        RawSample::chat(vec![turn("system", &long), turn("assistant", "a")]),
        RawSample::chat(vec![turn("user", &long), turn("assistant", &long)]),
        RawSample::chat(vec![turn("user", "q"), turn("assistant", &long)]),
        RawSample::chat(
            (0..40)
                .map(|i| turn(["user", "assistant"][i % 2], prefix(budget / 8 + i)))
                .collect(),
        ),
        // Short turns, many of them: cut by the length of the rendering.
        RawSample::chat(
            (0..2_000)
                .map(|i| turn(["user", "assistant"][i % 2], prefix(20 + i % 7)))
                .collect(),
        ),
    ];
    for train_on_inputs in [false, true] {
        let options = DataOptions {
            max_seq_len,
            train_on_inputs,
            ..options()
        };
        for (i, raw) in cases.iter().enumerate() {
            let mut cut = raw.clone();
            fit_to_budget(&mut cut, &tok, max_seq_len).unwrap();
            assert!(
                text_bytes(&cut) < text_bytes(raw),
                "case {i} is not cut: {} bytes",
                text_bytes(raw)
            );
            assert!(text_bytes(&cut) <= 2 * budget, "case {i}");
            let got = encode_sample(raw.clone(), &tok, &options).unwrap();
            let want = whole_then_truncated(raw, &tok, &options);
            assert_eq!(got, want, "case {i}, train_on_inputs {train_on_inputs}");
            assert!(got.truncated && got.sample.len() == max_seq_len, "case {i}");
        }
    }
}

#[test]
fn loading_long_records_cuts_them_and_keeps_the_samples_of_the_whole_text() {
    // More text than is tokenized at once, so tokenizing runs in groups.
    let tok = bpe_tokenizer();
    let records = TOKENIZED_BYTES_AT_ONCE * 3 / 100_000;
    let mut content = String::new();
    for i in 0..records {
        let text = varied_text(100_000 + i * 1_000, i as u64);
        content.push_str(&serde_json::json!({ "text": text }).to_string());
        content.push('\n');
        content.push_str("{\"text\": \"a short one\"}\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let source = DataSource::parse(&write(dir.path(), "long.jsonl", &content)).unwrap();
    let options = DataOptions {
        max_seq_len: 48,
        ..options()
    };
    let ds = load_dataset(&source, &tok, &options).unwrap();
    assert_eq!(ds.len(), 2 * records);
    assert_eq!(ds.stats().truncated, records);
    let whole = DataOptions {
        max_seq_len: usize::MAX / 2,
        ..options
    };
    let all = load_dataset(&source, &tok, &whole).unwrap();
    for (i, (got, full)) in ds.samples().iter().zip(all.samples()).enumerate() {
        let n = full.len().min(options.max_seq_len);
        assert_eq!(got.input_ids, full.input_ids[..n], "sample {i}");
        assert_eq!(got.target_mask, full.target_mask[..n], "sample {i}");
    }
}

#[test]
fn a_record_over_the_size_limit_is_refused_with_its_line_and_the_rest_is_checked() {
    let huge = format!("{{\"text\": \"{}\"}}", "x".repeat(1_500_000));
    let content = format!("{{\"text\": \"ok\"}}\n{huge}\n{{oops\n{{\"text\": \"ok\"}}\n{huge}");
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.jsonl", &content);
    let source = DataSource::parse(&file)
        .unwrap()
        .with_max_record_bytes(1_000_000);
    let expected = "d.jsonl:2: record is 1.5 MB, over the 1 MB limit\n\
        d.jsonl:3: not JSON: key must be a string at column 2\n\
        d.jsonl:5: record is 1.5 MB, over the 1 MB limit";
    let tok = TextTokenizer::init_model_default();
    let err = load_dataset(&source, &tok, &options()).unwrap_err();
    assert_eq!(err.to_string().replace(&file, "d.jsonl"), expected);
    // The check a coordinator runs before queuing reads with the same limit.
    let err = check_records(&source, Format::Auto).unwrap_err();
    assert_eq!(err.to_string().replace(&file, "d.jsonl"), expected);
    // Under the default limit (16 MB) the same file is read, the long
    // records cut to max_seq_len.
    let source = DataSource::parse(&file).unwrap();
    assert_eq!(MAX_RECORD_BYTES, 16_000_000);
    let err = load_dataset(&source, &tok, &options()).unwrap_err();
    assert_eq!(
        err.to_string().replace(&file, "d.jsonl"),
        "d.jsonl:3: not JSON: key must be a string at column 2"
    );
}

#[test]
fn a_long_record_under_the_size_limit_is_kept_and_truncated() {
    let long = "word ".repeat(2_000_000 / 5);
    let content = format!("{{\"text\": \"{long}\"}}\n{{\"text\": \"ok\"}}\n");
    let options = DataOptions {
        max_seq_len: 32,
        ..options()
    };
    let ds = load_str(&content, &options).unwrap();
    assert_eq!((ds.len(), ds.stats().truncated), (2, 1));
    assert_eq!(ds.get(0).input_ids, b(&long[..32]));
    let dir = tempfile::tempdir().unwrap();
    let source = DataSource::parse(&write(dir.path(), "d.jsonl", &content)).unwrap();
    assert_eq!(check_records(&source, Format::Auto).unwrap(), 2);
}
