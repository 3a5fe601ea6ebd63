//! Integration tests of the data formats users bring besides lorafleet's
//! own three shapes: Alpaca records, ShareGPT conversations and OpenAI's
//! per-message `weight`. Each is loaded from a real JSONL file and compared
//! with the equivalent completion or chat sample built by hand, tokenized
//! with the byte-level tokenizer of the `tiny` models (ids 0
//! `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>` = EOS, byte `b` is
//! `b + 3`), so ids and masks are checked exactly; and the messages for
//! records that are wrong.

use trainer::data::format::encode_sample;
use trainer::data::jsonl::alpaca_prompt;
use trainer::data::{
    DataError, DataOptions, DataSource, Format, RawSample, Shape, TokenizedDataset, check_records,
    load_dataset,
};
use trainer::tokenizer::{ChatMessage, TextTokenizer};

fn b(s: &str) -> Vec<u32> {
    s.bytes().map(|x| x as u32 + 3).collect()
}

const END: u32 = 2;

fn options() -> DataOptions {
    DataOptions {
        max_seq_len: 4096,
        ..DataOptions::default()
    }
}

/// Loads `content` from a file `d.jsonl`; an error has the folder taken out.
fn load(content: &str, options: &DataOptions) -> Result<TokenizedDataset, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.jsonl");
    std::fs::write(&file, content).unwrap();
    let file = file.to_str().unwrap().to_string();
    let source = DataSource::parse(&file).unwrap();
    load_dataset(&source, &TextTokenizer::init_model_default(), options)
        .map_err(|e: DataError| e.to_string().replace(&file, "d.jsonl"))
}

/// The sample `raw` encodes to, as `load` would give it.
fn by_hand(raw: RawSample, options: &DataOptions) -> (Vec<u32>, Vec<bool>) {
    let e = encode_sample(raw, &TextTokenizer::init_model_default(), options).unwrap();
    (e.sample.input_ids, e.sample.target_mask)
}

fn sample(ds: &TokenizedDataset, i: usize) -> (Vec<u32>, Vec<bool>) {
    let s = ds.get(i);
    (s.input_ids.clone(), s.target_mask.clone())
}

fn completion(prompt: &str, completion: &str) -> RawSample {
    RawSample::Completion {
        prompt: prompt.into(),
        completion: completion.into(),
    }
}

#[test]
fn alpaca_records_are_completions_of_instruction_and_input() {
    let content = concat!(
        r#"{"instruction": "Add.", "input": "2 3", "output": "5"}"#,
        "\n",
        r#"{"instruction": "Say hi.", "input": "", "output": "hi"}"#,
        "\n",
        r#"{"instruction": "Say no.", "output": "no", "id": 7}"#,
        "\n",
    );
    for train_on_inputs in [false, true] {
        let opts = DataOptions {
            train_on_inputs,
            ..options()
        };
        let ds = load(content, &opts).unwrap();
        assert_eq!(ds.stats().shape, Some(Shape::Alpaca));
        assert_eq!(
            sample(&ds, 0),
            by_hand(completion(&alpaca_prompt("Add.", "2 3"), "5"), &opts)
        );
        assert_eq!(
            sample(&ds, 1),
            by_hand(completion(&alpaca_prompt("Say hi.", ""), "hi"), &opts)
        );
        assert_eq!(
            sample(&ds, 2),
            by_hand(completion(&alpaca_prompt("Say no.", ""), "no"), &opts)
        );
    }
    // Exactly: the prompt masked, the output and EOS targets.
    let ds = load(content, &options()).unwrap();
    let prompt = b(&alpaca_prompt("Add.", "2 3"));
    let ids = [prompt.clone(), b("5"), vec![END]].concat();
    let mask: Vec<bool> = (0..ids.len()).map(|t| t >= prompt.len()).collect();
    assert_eq!(sample(&ds, 0), (ids, mask));
    // Forced, and checked without tokenizing.
    let forced = DataOptions {
        format: Format::Alpaca,
        ..options()
    };
    assert_eq!(load(content, &forced).unwrap().len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.jsonl");
    std::fs::write(&file, content).unwrap();
    let source = DataSource::parse(file.to_str().unwrap()).unwrap();
    assert_eq!(check_records(&source, Format::Auto).unwrap(), 3);
    assert_eq!(
        check_records(&source, Format::ShareGpt)
            .unwrap_err()
            .to_string()
            .lines()
            .count(),
        3
    );
}

#[test]
fn sharegpt_conversations_are_chats_with_mapped_roles() {
    let line = r#"{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a1"}, {"from": "user", "value": "r"}, {"from": "assistant", "value": "a2"}]}"#;
    let turn = ChatMessage::new;
    let chat = RawSample::chat(vec![
        turn("system", "S"),
        turn("user", "q"),
        turn("assistant", "a1"),
        turn("user", "r"),
        turn("assistant", "a2"),
    ]);
    for train_on_inputs in [false, true] {
        let opts = DataOptions {
            train_on_inputs,
            ..options()
        };
        let ds = load(line, &opts).unwrap();
        assert_eq!(ds.stats().shape, Some(Shape::ShareGpt));
        assert_eq!(sample(&ds, 0), by_hand(chat.clone(), &opts));
    }
    let ds = load(line, &options()).unwrap();
    let targets: Vec<u32> = ds
        .get(0)
        .input_ids
        .iter()
        .zip(&ds.get(0).target_mask)
        .filter(|(_, t)| **t)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(targets, [b("a1"), vec![END], b("a2"), vec![END]].concat());
    // A tokenizer without a chat template cannot read ShareGPT either.
    let tok = TextTokenizer::byte_level(&["<|endoftext|>"], &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.jsonl");
    std::fs::write(&file, line).unwrap();
    let source = DataSource::parse(file.to_str().unwrap()).unwrap();
    let err = load_dataset(&source, &tok, &options()).unwrap_err();
    assert!(matches!(err, DataError::NoChatTemplate { .. }), "{err}");
}

#[test]
fn weight_zero_masks_exactly_that_assistant_message() {
    let messages = |w1: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": "q"}}, {{"role": "assistant", "content": "a1"{w1}}}, {{"role": "user", "content": "r"}}, {{"role": "assistant", "content": "a2", "weight": 1}}]}}"#
        )
    };
    let plain = load(&messages(""), &options()).unwrap();
    let weighted = load(&messages(r#", "weight": 0"#), &options()).unwrap();
    let (ids, mask) = sample(&plain, 0);
    let (wids, wmask) = sample(&weighted, 0);
    assert_eq!(ids, wids, "the weight changes no token");
    // The first assistant turn's piece: "a1", its <|im_end|> and the
    // template's newline after it.
    let a1 = [b("a1"), vec![END], b("\n")].concat();
    let at = ids.windows(a1.len()).position(|w| w == a1).unwrap();
    for (t, (&m, &wm)) in mask.iter().zip(&wmask).enumerate() {
        if (at..at + 3).contains(&t) {
            assert!(
                m && !wm,
                "token {t}: a target without the weight, not with it"
            );
        } else {
            assert_eq!(m, wm, "token {t}: the rest is unchanged");
        }
    }
    assert_eq!(
        weighted.stats().target_tokens,
        b("a2").len() + 1,
        "only a2 and its <|im_end|>"
    );
    // train_on_inputs trains the inputs, not a message given weight 0.
    let opts = DataOptions {
        train_on_inputs: true,
        ..options()
    };
    let (_, mask) = sample(&load(&messages(r#", "weight": 0"#), &opts).unwrap(), 0);
    let untrained: Vec<usize> = (0..mask.len()).filter(|&t| !mask[t]).collect();
    assert_eq!(untrained, [0, at, at + 1, at + 2, at + 3]);
    // Every assistant message at weight 0: nothing to learn, the sample is dropped.
    let none = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}"#;
    let ok = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let ds = load(&format!("{none}\n{ok}\n"), &options()).unwrap();
    assert_eq!((ds.len(), ds.stats().dropped_without_targets), (1, 1));
}

#[test]
fn bad_records_name_the_line_the_field_and_a_likely_spelling() {
    let content = [
        r#"{"instrution": "Add.", "input": "2 3", "output": "5"}"#,
        r#"{"conversation": [{"from": "human", "value": "q"}]}"#,
        r#"{"mesages": [{"role": "user", "content": "q"}]}"#,
        r#"{"conversations": [{"from": "humman", "value": "q"}, {"from": "gpt", "value": "a"}]}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}"#,
        r#"{"messages": [{"role": "assistant", "content": "a", "weight": "1"}]}"#,
    ]
    .join("\n");
    let unknown = "unknown shape: expected a \"text\", \"prompt\" and \"completion\", \"messages\", \"instruction\" and \"output\", or \"conversations\" key (keys: ";
    let err = load(&content, &options()).unwrap_err();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        "d.jsonl:1: no \"instruction\" key; did you mean \"instruction\" for \"instrution\"?"
    );
    assert_eq!(
        lines[1],
        format!(
            "d.jsonl:2: {}conversation); did you mean \"conversations\" for \"conversation\"?",
            unknown
        )
    );
    assert_eq!(
        lines[2],
        format!(
            "d.jsonl:3: {}mesages); did you mean \"messages\" for \"mesages\"?",
            unknown
        )
    );
    assert_eq!(
        lines[3],
        "d.jsonl:4: conversations[0].from \"humman\" is not system, human, gpt, user or assistant; did you mean \"human\"?"
    );
    assert_eq!(
        lines[4],
        "d.jsonl:5: messages[1].weight must be 0 or 1 (got 0.5)"
    );
    assert_eq!(
        lines[5],
        "d.jsonl:6: messages[0].weight must be 0 or 1 (got a string)"
    );
    assert_eq!(lines.len(), 6);
    // One shape per file: Alpaca is not the completion shape.
    let mixed = concat!(
        r#"{"prompt": "p", "completion": "c"}"#,
        "\n",
        r#"{"instruction": "i", "output": "o"}"#,
        "\n"
    );
    assert_eq!(
        load(mixed, &options()).unwrap_err(),
        "d.jsonl:2: mixed shapes: this line is alpaca, line 1 is completion (use one shape per file)"
    );
    assert_eq!("sharegpt".parse::<Format>().unwrap(), Format::ShareGpt);
    assert_eq!("alpaca".parse::<Format>().unwrap(), Format::Alpaca);
}

#[test]
fn a_weighted_chat_cut_to_max_seq_len_keeps_the_head_of_the_whole_one() {
    let long = "long answer ".repeat(20_000);
    let turn = ChatMessage::new;
    let raw = RawSample::Chat {
        messages: vec![
            turn("user", "q"),
            turn("assistant", "a"),
            turn("user", "r"),
            turn("assistant", &long),
            turn("user", "s"),
            turn("assistant", "b"),
        ],
        untrained: vec![1, 5],
    };
    let whole = by_hand(raw.clone(), &options());
    for max_seq_len in [8, 60, 200] {
        let opts = DataOptions {
            max_seq_len,
            ..options()
        };
        let (ids, mask) = by_hand(raw.clone(), &opts);
        assert_eq!(ids, whole.0[..max_seq_len]);
        assert_eq!(mask, whole.1[..max_seq_len]);
    }
    let a = [b("a"), vec![END]].concat();
    let at = whole.0.windows(2).position(|w| w == a).unwrap();
    assert!(
        !whole.1[at] && !whole.1[at + 1],
        "weight 0: a is not a target"
    );
}
