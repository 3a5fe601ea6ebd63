//! One JSONL line → one [`RawSample`], with the shape rules and the
//! messages users see for bad lines.
//!
//! Owns: JSON parsing, shape detection and forcing, value checks (empty
//! text, unknown roles, a chat without an assistant turn, ...) and the
//! per-file shape consistency of `format: auto` ([`ShapeTracker`]). Each
//! check returns the message part of `FILE:LINE: message`; the caller adds
//! the file and line. Not here: reading bytes ([`super::source`]) or
//! tokenizing ([`super::format`]).

use serde_json::{Map, Value};

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

/// Parses one line (already known to be non-blank) in `format`.
pub fn parse_line(line: &str, format: Format) -> Result<RawSample, String> {
    let value: Value = serde_json::from_str(line).map_err(not_json)?;
    let Value::Object(object) = value else {
        return Err(format!("not a JSON object (got {})", type_name(&value)));
    };
    let shape = match format.shape() {
        Some(shape) => shape,
        None => detect_shape(&object)?,
    };
    match shape {
        Shape::Text => parse_text(&object, format),
        Shape::Completion => parse_completion(&object, format),
        Shape::Chat => parse_chat(&object, format),
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

/// The shape an object's keys say it has, or why it has none.
fn detect_shape(object: &Map<String, Value>) -> Result<Shape, String> {
    let mut found: Vec<(Shape, &str)> = Vec::new();
    if object.contains_key("text") {
        found.push((Shape::Text, "\"text\""));
    }
    if object.contains_key("prompt") || object.contains_key("completion") {
        let key = if object.contains_key("prompt") {
            "\"prompt\""
        } else {
            "\"completion\""
        };
        found.push((Shape::Completion, key));
    }
    if object.contains_key("messages") {
        found.push((Shape::Chat, "\"messages\""));
    }
    match found.as_slice() {
        [(shape, _)] => Ok(*shape),
        [] => {
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            let keys = if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            };
            Err(format!(
                "unknown shape: expected a \"text\", \"prompt\" and \"completion\", or \"messages\" key (keys: {keys})"
            ))
        }
        [.., _] => {
            let keys: Vec<&str> = found.iter().map(|(_, k)| *k).collect();
            Err(format!(
                "ambiguous shape: has both {} keys (set format to pick one)",
                keys.join(" and ")
            ))
        }
    }
}

fn forced(format: Format) -> String {
    match format {
        Format::Auto => String::new(),
        f => format!(" (format: {})", f.shape().expect("forced").name()),
    }
}

/// A string field: present, a string.
fn string_field<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    format: Format,
) -> Result<&'a str, String> {
    match object.get(key) {
        None => Err(format!("no \"{key}\" key{}", forced(format))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "\"{key}\" is not a string (got {})",
            type_name(other)
        )),
    }
}

fn parse_text(object: &Map<String, Value>, format: Format) -> Result<RawSample, String> {
    let text = string_field(object, "text", format)?;
    if text.trim().is_empty() {
        return Err("\"text\" is empty".into());
    }
    Ok(RawSample::Text(text.to_string()))
}

fn parse_completion(object: &Map<String, Value>, format: Format) -> Result<RawSample, String> {
    let prompt = string_field(object, "prompt", format)?;
    let completion = string_field(object, "completion", format)?;
    if completion.is_empty() {
        return Err("\"completion\" is empty".into());
    }
    Ok(RawSample::Completion {
        prompt: prompt.to_string(),
        completion: completion.to_string(),
    })
}

fn parse_chat(object: &Map<String, Value>, format: Format) -> Result<RawSample, String> {
    let list = match object.get("messages") {
        None => return Err(format!("no \"messages\" key{}", forced(format))),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "\"messages\" is not a list (got {})",
                type_name(other)
            ));
        }
    };
    if list.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(format!(
                "messages[{i}] is not an object (got {})",
                type_name(item)
            ));
        };
        let role = match m.get("role") {
            None => return Err(format!("messages[{i}] has no \"role\"")),
            Some(Value::String(r)) => r,
            Some(other) => {
                return Err(format!(
                    "messages[{i}].role is not a string (got {})",
                    type_name(other)
                ));
            }
        };
        if !ROLES.contains(&role.as_str()) {
            return Err(format!(
                "messages[{i}].role {role:?} is not system, user or assistant"
            ));
        }
        let content = match m.get("content") {
            None => return Err(format!("messages[{i}] has no \"content\"")),
            Some(Value::String(c)) => c,
            Some(other) => {
                return Err(format!(
                    "messages[{i}].content is not a string (got {})",
                    type_name(other)
                ));
            }
        };
        messages.push(ChatMessage::new(role.as_str(), content.as_str()));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("conversation has no assistant turn".into());
    }
    Ok(RawSample::Chat(messages))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
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
