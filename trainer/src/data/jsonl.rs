//! One JSONL line → one [`RawSample`], with the shape rules and the
//! messages users see for bad lines.
//!
//! Owns: parsing a line (its JSON decoded by `record`), shape detection and
//! forcing, value checks (empty text, a missing key with a did-you-mean
//! for a misspelt one, ...) and the per-file shape consistency of
//! `format: auto` ([`ShapeTracker`]); the chat shapes' checks (roles,
//! weights) are in `chat`, Alpaca's prompt in `alpaca`. Each check returns the message part
//! of `FILE:LINE: message`; the caller adds the file and line. The messages
//! users see name at most [`KEYS_SHOWN`] keys and [`ROLE_CHARS_SHOWN`]
//! characters of a role. Not here: how a line's JSON is decoded into the
//! few fields a sample can use (`record`), reading bytes
//! ([`super::source`]) or tokenizing ([`super::format`]).

mod alpaca;

pub use alpaca::{
    WITH_INPUT as ALPACA_WITH_INPUT, WITHOUT_INPUT as ALPACA_WITHOUT_INPUT, alpaca_prompt,
};
mod chat;
mod record;

use record::{Field, Line, Record};

use super::{Format, Shape};
use crate::tokenizer::ChatMessage;

/// A line's content, checked but not yet tokenized: what is encoded. An
/// Alpaca record becomes a `Completion`, a ShareGPT one a `Chat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSample {
    Text(String),
    Completion {
        prompt: String,
        completion: String,
    },
    Chat {
        messages: Vec<ChatMessage>,
        /// The indexes of the assistant messages given `"weight": 0`, in
        /// order: they are not targets.
        untrained: Vec<usize>,
    },
}

impl RawSample {
    /// A chat whose assistant messages are all targets.
    pub fn chat(messages: Vec<ChatMessage>) -> RawSample {
        RawSample::Chat {
            messages,
            untrained: Vec::new(),
        }
    }

    /// How it is encoded: `Text`, `Completion` or `Chat`.
    pub fn shape(&self) -> Shape {
        match self {
            RawSample::Text(_) => Shape::Text,
            RawSample::Completion { .. } => Shape::Completion,
            RawSample::Chat { .. } => Shape::Chat,
        }
    }
}

/// The roles a chat sample may use.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Most keys an "unknown shape" message lists.
pub const KEYS_SHOWN: usize = 8;
/// Most characters of an unknown role a message shows.
pub const ROLE_CHARS_SHOWN: usize = 40;

/// Parses one line (already known to be non-blank) in `format`.
pub fn parse_line(line: &str, format: Format) -> Result<RawSample, String> {
    parse_record(line, format).map(|(_, sample)| sample)
}

/// Parses one line (already known to be non-blank) in `format`: the
/// record's shape (what one file keeps to) and its sample.
pub fn parse_record(line: &str, format: Format) -> Result<(Shape, RawSample), String> {
    let record = match serde_json::from_str::<Line>(line).map_err(not_json)? {
        Line::Object(record) => *record,
        Line::Other(kind) => return Err(format!("not a JSON object (got {kind})")),
    };
    let shape = match format.shape() {
        Some(shape) => shape,
        None => detect_shape(&record)?,
    };
    let sample = match shape {
        Shape::Text => parse_text(record, format),
        Shape::Completion => parse_completion(record, format),
        Shape::Chat => chat::parse_messages(record, format),
        Shape::Alpaca => alpaca::parse_alpaca(record, format),
        Shape::ShareGpt => chat::parse_conversations(record, format),
    }?;
    Ok((shape, sample))
}

/// `not JSON: <serde_json's reason> at column N` (the line is the caller's).
fn not_json(e: serde_json::Error) -> String {
    let full = e.to_string();
    let reason = full
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&full);
    format!("not JSON: {reason} at column {}", e.column())
}

/// The shape a record's keys say it has, or why it has none.
fn detect_shape(record: &Record) -> Result<Shape, String> {
    let either = |a: &Option<Field>, b: &Option<Field>, ka, kb| match (a, b) {
        (Some(_), _) => Some(ka),
        (None, Some(_)) => Some(kb),
        (None, None) => None,
    };
    let candidates = [
        (Shape::Text, record.text.as_ref().map(|_| "\"text\"")),
        (
            Shape::Completion,
            either(
                &record.prompt,
                &record.completion,
                "\"prompt\"",
                "\"completion\"",
            ),
        ),
        (
            Shape::Chat,
            record.messages.as_ref().map(|_| "\"messages\""),
        ),
        (
            Shape::Alpaca,
            either(
                &record.instruction,
                &record.output,
                "\"instruction\"",
                "\"output\"",
            ),
        ),
        (
            Shape::ShareGpt,
            record.conversations.as_ref().map(|_| "\"conversations\""),
        ),
    ];
    let found: Vec<(Shape, &str)> = candidates
        .into_iter()
        .filter_map(|(shape, key)| key.map(|k| (shape, k)))
        .collect();
    match found.as_slice() {
        [(shape, _)] => Ok(*shape),
        [] => Err(format!(
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", \"messages\", \"instruction\" and \"output\", or \"conversations\" key (keys: {}){}",
            key_list(record),
            did_you_mean(&record.near_misses)
        )),
        [.., _] => {
            let keys: Vec<&str> = found.iter().map(|(_, k)| *k).collect();
            Err(format!(
                "ambiguous shape: has both {} keys (set format to pick one)",
                keys.join(" and ")
            ))
        }
    }
}

/// `; did you mean "instruction" for "instrution", "output" for "ouput"?`
/// for the unknown keys that look like misspelt known ones, or nothing.
fn did_you_mean(near_misses: &[(String, &'static str)]) -> String {
    if near_misses.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = near_misses
        .iter()
        .map(|(key, known)| format!("{known:?} for {key:?}"))
        .collect();
    format!("; did you mean {}?", pairs.join(", "))
}

/// `a, b, c` (at most [`KEYS_SHOWN`] of them, then `...`), or `none`.
fn key_list(record: &Record) -> String {
    if record.keys.is_empty() {
        return "none".to_string();
    }
    let shown: Vec<&str> = record.keys.iter().map(String::as_str).collect();
    let mut list = shown.join(", ");
    if record.more_keys {
        list.push_str(", ...");
    }
    list
}

fn forced(format: Format) -> String {
    match format {
        Format::Auto => String::new(),
        f => format!(" (format: {})", f.shape().expect("forced").name()),
    }
}

/// `no "key" key`, naming the format when forced and the record's key that
/// looks like a misspelling of it.
fn missing_key(key: &str, format: Format, near_misses: &[(String, &'static str)]) -> String {
    let hint = match near_misses.iter().find(|(_, known)| *known == key) {
        Some((typo, _)) => format!("; did you mean {key:?} for {typo:?}?"),
        None => String::new(),
    };
    format!("no {key:?} key{}{hint}", forced(format))
}

/// A string field: present, a string.
fn string_field(
    field: Option<Field>,
    key: &str,
    format: Format,
    near_misses: &[(String, &'static str)],
) -> Result<String, String> {
    match field {
        None => Err(missing_key(key, format, near_misses)),
        Some(Field::Str(s)) => Ok(s),
        Some(Field::Other(kind)) => Err(format!("\"{key}\" is not a string (got {kind})")),
    }
}

fn parse_text(record: Record, format: Format) -> Result<RawSample, String> {
    let text = string_field(record.text, "text", format, &record.near_misses)?;
    if text.trim().is_empty() {
        return Err("\"text\" is empty".into());
    }
    Ok(RawSample::Text(text))
}

fn parse_completion(record: Record, format: Format) -> Result<RawSample, String> {
    let near = &record.near_misses;
    let prompt = string_field(record.prompt, "prompt", format, near)?;
    let completion = string_field(record.completion, "completion", format, near)?;
    if completion.is_empty() {
        return Err("\"completion\" is empty".into());
    }
    Ok(RawSample::Completion { prompt, completion })
}

/// `"role"` quoted, its first [`ROLE_CHARS_SHOWN`] characters when longer.
fn shown_role(role: &str) -> String {
    match role.char_indices().nth(ROLE_CHARS_SHOWN) {
        None => format!("{role:?}"),
        Some((end, _)) => format!("{:?}... ({} bytes)", &role[..end], role.len()),
    }
}

/// Enforces one shape per file under `format: auto`: the first valid line
/// decides.
#[derive(Debug, Default)]
pub struct ShapeTracker {
    first: Option<(Shape, usize)>,
}

impl ShapeTracker {
    /// Records `shape` seen at `line`, or says why it clashes with the file's.
    pub fn check(&mut self, shape: Shape, line: usize) -> Result<(), String> {
        match self.first {
            None => {
                self.first = Some((shape, line));
                Ok(())
            }
            Some((first, _)) if first == shape => Ok(()),
            Some((first, first_line)) => Err(format!(
                "mixed shapes: this line is {shape}, line {first_line} is {first} (use one shape per file)"
            )),
        }
    }

    /// The file's shape, once a valid line was seen.
    pub fn shape(&self) -> Option<Shape> {
        self.first.map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> String {
        parse_line(line, Format::Auto).unwrap_err()
    }

    #[test]
    fn detects_each_shape() {
        assert_eq!(
            parse_line(r#"{"text": "hi", "id": 3}"#, Format::Auto).unwrap(),
            RawSample::Text("hi".into())
        );
        assert_eq!(
            parse_line(r#"{"prompt": "a", "completion": "b"}"#, Format::Auto).unwrap(),
            RawSample::Completion {
                prompt: "a".into(),
                completion: "b".into()
            }
        );
        let chat = parse_line(
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
            Format::Auto,
        )
        .unwrap();
        assert_eq!(chat.shape(), Shape::Chat);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert_eq!(err("[1, 2]"), "not a JSON object (got a list)");
        assert!(err("{oops").starts_with("not JSON: "), "{}", err("{oops"));
        assert_eq!(
            err(r#"{"input": "x"}"#),
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", \"messages\", \"instruction\" and \"output\", or \"conversations\" key (keys: input)"
        );
        assert_eq!(
            err(r#"{"text": "x", "messages": []}"#),
            "ambiguous shape: has both \"text\" and \"messages\" keys (set format to pick one)"
        );
        assert_eq!(err(r#"{"text": ""}"#), "\"text\" is empty");
        assert_eq!(
            err(r#"{"text": 5}"#),
            "\"text\" is not a string (got a number)"
        );
        assert_eq!(err(r#"{"prompt": "x"}"#), "no \"completion\" key");
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": "x"}]}"#),
            "conversation has no assistant turn"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "tool", "content": "x"}]}"#),
            "messages[0].role \"tool\" is not system, user or assistant"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "assistant", "content": null}]}"#),
            "messages[0].content is not a string (got null)"
        );
        assert_eq!(
            parse_line(r#"{"prompt": "a", "completion": "b"}"#, Format::Text).unwrap_err(),
            "no \"text\" key (format: text)"
        );
    }

    #[test]
    fn misspelt_keys_get_a_suggestion_when_no_shape_matches() {
        assert_eq!(
            err(r#"{"mesages": [], "id": 1}"#),
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", \"messages\", \"instruction\" and \"output\", or \"conversations\" key (keys: id, mesages); did you mean \"messages\" for \"mesages\"?"
        );
        assert!(
            err(r#"{"conversation": [], "Text": "x"}"#).ends_with(
                "(keys: Text, conversation); did you mean \"conversations\" for \"conversation\", \"text\" for \"Text\"?"
            ),
            "{}",
            err(r#"{"conversation": [], "Text": "x"}"#)
        );
        assert_eq!(
            err(r#"{"prompt": "p", "completions": "c"}"#),
            "no \"completion\" key; did you mean \"completion\" for \"completions\"?"
        );
    }

    #[test]
    fn values_are_read_as_a_json_object_would_be() {
        // A key given twice keeps its last value; escaped keys are keys.
        assert_eq!(
            parse_line(r#"{"text": "a", "text": "b"}"#, Format::Auto).unwrap(),
            RawSample::Text("b".into())
        );
        let chat = parse_line(
            r#"{"messages": [{"r\u006fle": "assistant", "content": "x\ny", "name": [1]}]}"#,
            Format::Auto,
        )
        .unwrap();
        assert_eq!(
            chat,
            RawSample::chat(vec![ChatMessage::new("assistant", "x\ny")])
        );
        assert_eq!(
            err(r#"{"text": {"nested": [1, {"a": null}]}}"#),
            "\"text\" is not a string (got an object)"
        );
        assert_eq!(
            err(r#"{"messages": "hi"}"#),
            "\"messages\" is not a list (got a string)"
        );
        assert_eq!(
            err(r#"{"messages": [[{"role": "user"}]]}"#),
            "messages[0] is not an object (got a list)"
        );
        assert_eq!(err("true"), "not a JSON object (got a boolean)");
        assert!(err(r#"{"text": "a"} x"#).starts_with("not JSON: trailing characters"));
    }

    #[test]
    fn messages_name_a_bounded_part_of_what_they_quote() {
        let keys: Vec<String> = (0..20).map(|i| format!("\"k{i:02}\": 0")).collect();
        assert_eq!(
            err(&format!("{{{}}}", keys.join(", "))),
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", \"messages\", \"instruction\" and \"output\", or \"conversations\" key (keys: k00, k01, k02, k03, k04, k05, k06, k07, ...)"
        );
        let role = "r".repeat(10_000);
        assert_eq!(
            err(&format!(
                r#"{{"messages": [{{"role": "{role}", "content": "x"}}]}}"#
            )),
            format!(
                "messages[0].role \"{}\"... (10000 bytes) is not system, user or assistant",
                "r".repeat(ROLE_CHARS_SHOWN)
            )
        );
    }

    #[test]
    fn shape_tracker_names_the_first_line() {
        let mut t = ShapeTracker::default();
        t.check(Shape::Text, 2).unwrap();
        t.check(Shape::Text, 3).unwrap();
        assert_eq!(
            t.check(Shape::Chat, 4).unwrap_err(),
            "mixed shapes: this line is chat, line 2 is text (use one shape per file)"
        );
    }
}
