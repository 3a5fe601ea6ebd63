//! One JSONL line → one [`RawSample`], with the shape rules and the
//! messages users see for bad lines.
//!
//! Owns: JSON parsing, shape detection and forcing, value checks (empty
//! text, unknown roles, a chat without an assistant turn, ...) and the
//! per-file shape consistency of `format: auto` ([`ShapeTracker`]). Each
//! check returns the message part of `FILE:LINE: message`; the caller adds
//! the file and line. Not here: reading bytes ([`super::source`]) or
//! tokenizing ([`super::format`]).
//!
//! A line is deserialized straight into the few fields a sample can use
//! (`Record`): the strings are kept, any other value is skipped and only
//! its kind is remembered (for "is not a string (got a list)"), and keys
//! the shapes do not use are skipped. So a record costs about its own size
//! in memory, whatever it holds (a generic JSON tree costs 10–20× the text
//! of a list of small objects), and the messages users see name at most
//! [`KEYS_SHOWN`] keys and [`ROLE_CHARS_SHOWN`] characters of a role.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Format, Shape};
use crate::tokenizer::ChatMessage;

/// A line's content, checked but not yet tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSample {
    Text(String),
    Completion { prompt: String, completion: String },
    Chat(Vec<ChatMessage>),
}

impl RawSample {
    pub fn shape(&self) -> Shape {
        match self {
            RawSample::Text(_) => Shape::Text,
            RawSample::Completion { .. } => Shape::Completion,
            RawSample::Chat(_) => Shape::Chat,
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
    let record = match serde_json::from_str::<Line>(line).map_err(not_json)? {
        Line::Object(record) => record,
        Line::Other(kind) => return Err(format!("not a JSON object (got {kind})")),
    };
    let shape = match format.shape() {
        Some(shape) => shape,
        None => detect_shape(&record)?,
    };
    match shape {
        Shape::Text => parse_text(record, format),
        Shape::Completion => parse_completion(record, format),
        Shape::Chat => parse_chat(record, format),
    }
}

/// `not JSON: <serde_json's reason> at column N` (the line is the caller's).
fn not_json(e: serde_json::Error) -> String {
    let full = e.to_string();
    let reason = full
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&full);
    format!("not JSON: {reason} at column {}", e.column())
}

/// A whole line: an object, or the kind of value it is instead.
enum Line {
    Object(Record),
    Other(&'static str),
}

/// The keys of a line's object that the shapes use; the others are only
/// named. A key given twice keeps its last value, as in a JSON object.
#[derive(Default)]
struct Record {
    /// The first [`KEYS_SHOWN`] keys of the object in sorted order.
    keys: BTreeSet<String>,
    /// The object has more keys than `keys` holds.
    more_keys: bool,
    text: Option<Field>,
    prompt: Option<Field>,
    completion: Option<Field>,
    messages: Option<Messages>,
}

impl Record {
    /// Remembers `key` for an "unknown shape" message, keeping only the
    /// first [`KEYS_SHOWN`] in sorted order.
    fn note_key(&mut self, key: String) {
        self.keys.insert(key);
        if self.keys.len() > KEYS_SHOWN {
            self.keys.pop_last();
            self.more_keys = true;
        }
    }
}

/// A value where a string is wanted.
enum Field {
    Str(String),
    /// Another kind of value (skipped): "a number", "null", ...
    Other(&'static str),
}

/// The value of `"messages"`.
enum Messages {
    List(Vec<Message>),
    Other(&'static str),
}

/// One item of `"messages"`.
enum Message {
    Object {
        role: Option<Field>,
        content: Option<Field>,
    },
    Other(&'static str),
}

/// Skips the rest of a list without keeping it.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Skips the rest of an object without keeping it.
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the scalar `visit_*` methods of a visitor whose values are
/// `$other(kind)` for every kind but the ones it handles itself.
macro_rules! other_scalars {
    ($other:path) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other("a number"))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other("null"))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($other("null"))
        }
    };
}

/// Implements `visit_str` as `$other("a string")`, the string skipped.
macro_rules! other_string {
    ($other:path) => {
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other("a string"))
        }
    };
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_scalars!(Field::Other);
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Field, E> {
                Ok(Field::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field, A::Error> {
                skip_seq(seq).map(|()| Field::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
                skip_map(map).map(|()| Field::Other("an object"))
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Message, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_scalars!(Message::Other);
            other_string!(Message::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Message, A::Error> {
                skip_seq(seq).map(|()| Message::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let (mut role, mut content) = (None, None);
                while let Some(key) = map.next_key::<MessageKey>()? {
                    match key {
                        MessageKey::Role => role = Some(map.next_value()?),
                        MessageKey::Content => content = Some(map.next_value()?),
                        MessageKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Message::Object { role, content })
            }
        }
        deserializer.deserialize_any(MessageVisitor)
    }
}

/// A key of a message object, read without being kept.
enum MessageKey {
    Role,
    Content,
    Other,
}

impl<'de> Deserialize<'de> for MessageKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MessageKey, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = MessageKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<MessageKey, E> {
                Ok(match v {
                    "role" => MessageKey::Role,
                    "content" => MessageKey::Content,
                    _ => MessageKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Messages, D::Error> {
        struct MessagesVisitor;
        impl<'de> Visitor<'de> for MessagesVisitor {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_scalars!(Messages::Other);
            other_string!(Messages::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut list = Vec::new();
                while let Some(message) = seq.next_element()? {
                    list.push(message);
                }
                Ok(Messages::List(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Messages, A::Error> {
                skip_map(map).map(|()| Messages::Other("an object"))
            }
        }
        deserializer.deserialize_any(MessagesVisitor)
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Line, D::Error> {
        struct LineVisitor;
        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_scalars!(Line::Other);
            other_string!(Line::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Line, A::Error> {
                skip_seq(seq).map(|()| Line::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
                let mut record = Record::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "text" => record.text = Some(map.next_value()?),
                        "prompt" => record.prompt = Some(map.next_value()?),
                        "completion" => record.completion = Some(map.next_value()?),
                        "messages" => record.messages = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    record.note_key(key);
                }
                Ok(Line::Object(record))
            }
        }
        deserializer.deserialize_any(LineVisitor)
    }
}

/// The shape a record's keys say it has, or why it has none.
fn detect_shape(record: &Record) -> Result<Shape, String> {
    let mut found: Vec<(Shape, &str)> = Vec::new();
    if record.text.is_some() {
        found.push((Shape::Text, "\"text\""));
    }
    if record.prompt.is_some() || record.completion.is_some() {
        let key = if record.prompt.is_some() {
            "\"prompt\""
        } else {
            "\"completion\""
        };
        found.push((Shape::Completion, key));
    }
    if record.messages.is_some() {
        found.push((Shape::Chat, "\"messages\""));
    }
    match found.as_slice() {
        [(shape, _)] => Ok(*shape),
        [] => Err(format!(
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", or \"messages\" key (keys: {})",
            key_list(record)
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

/// A string field: present, a string.
fn string_field(field: Option<Field>, key: &str, format: Format) -> Result<String, String> {
    match field {
        None => Err(format!("no \"{key}\" key{}", forced(format))),
        Some(Field::Str(s)) => Ok(s),
        Some(Field::Other(kind)) => Err(format!("\"{key}\" is not a string (got {kind})")),
    }
}

fn parse_text(record: Record, format: Format) -> Result<RawSample, String> {
    let text = string_field(record.text, "text", format)?;
    if text.trim().is_empty() {
        return Err("\"text\" is empty".into());
    }
    Ok(RawSample::Text(text))
}

fn parse_completion(record: Record, format: Format) -> Result<RawSample, String> {
    let prompt = string_field(record.prompt, "prompt", format)?;
    let completion = string_field(record.completion, "completion", format)?;
    if completion.is_empty() {
        return Err("\"completion\" is empty".into());
    }
    Ok(RawSample::Completion { prompt, completion })
}

fn parse_chat(record: Record, format: Format) -> Result<RawSample, String> {
    let list = match record.messages {
        None => return Err(format!("no \"messages\" key{}", forced(format))),
        Some(Messages::List(list)) => list,
        Some(Messages::Other(kind)) => {
            return Err(format!("\"messages\" is not a list (got {kind})"));
        }
    };
    if list.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let (role, content) = match item {
            Message::Other(kind) => {
                return Err(format!("messages[{i}] is not an object (got {kind})"));
            }
            Message::Object { role, content } => (role, content),
        };
        let role = match role {
            None => return Err(format!("messages[{i}] has no \"role\"")),
            Some(Field::Str(r)) => r,
            Some(Field::Other(kind)) => {
                return Err(format!("messages[{i}].role is not a string (got {kind})"));
            }
        };
        if !ROLES.contains(&role.as_str()) {
            return Err(format!(
                "messages[{i}].role {} is not system, user or assistant",
                shown_role(&role)
            ));
        }
        let content = match content {
            None => return Err(format!("messages[{i}] has no \"content\"")),
            Some(Field::Str(c)) => c,
            Some(Field::Other(kind)) => {
                return Err(format!(
                    "messages[{i}].content is not a string (got {kind})"
                ));
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("conversation has no assistant turn".into());
    }
    Ok(RawSample::Chat(messages))
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
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", or \"messages\" key (keys: input)"
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
            RawSample::Chat(vec![ChatMessage::new("assistant", "x\ny")])
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
            "unknown shape: expected a \"text\", \"prompt\" and \"completion\", or \"messages\" key (keys: k00, k01, k02, k03, k04, k05, k06, k07, ...)"
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
