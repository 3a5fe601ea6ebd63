//! The chat shapes: OpenAI's `{"messages": [{"role", "content", "weight"}]}`
//! and ShareGPT's `{"conversations": [{"from", "value"}]}`, both checked
//! into a chat [`RawSample`] with roles `system`, `user` and `assistant`.
//!
//! A message may carry `"weight": 0 | 1` (OpenAI's fine-tuning format):
//! an assistant message with weight 0 is not a target, 1 (or no weight) is
//! today's default; on other messages it changes nothing. Any other
//! weight is an error. Not here: decoding the JSON (`record`), tokenizing
//! (`format`).

use super::record::{Field, Keys, Message, Messages, Record, Weight};
use super::{Format, ROLES, RawSample, missing_key, shown_role};
use crate::suggest::closest;
use crate::tokenizer::ChatMessage;

/// How one chat shape names its list, its keys and its roles.
struct ChatKeys {
    list: &'static str,
    role: &'static str,
    content: &'static str,
    /// Each role word a record may use and the chat role it stands for.
    roles: &'static [(&'static str, &'static str)],
    /// How an unknown-role message lists the roles.
    roles_shown: &'static str,
}

const MESSAGES: ChatKeys = ChatKeys {
    list: "messages",
    role: "role",
    content: "content",
    roles: &[
        ("system", "system"),
        ("user", "user"),
        ("assistant", "assistant"),
    ],
    roles_shown: "system, user or assistant",
};

/// ShareGPT's roles: `human` and `gpt`, and the chat names too.
const CONVERSATIONS: ChatKeys = ChatKeys {
    list: "conversations",
    role: "from",
    content: "value",
    roles: &[
        ("system", "system"),
        ("human", "user"),
        ("gpt", "assistant"),
        ("user", "user"),
        ("assistant", "assistant"),
    ],
    roles_shown: "system, human, gpt, user or assistant",
};

/// `{"messages": [...]}`.
pub(super) fn parse_messages(record: Record, format: Format) -> Result<RawSample, String> {
    parse_turns(record.messages, &record.near_misses, &MESSAGES, format)
}

/// `{"conversations": [...]}`.
pub(super) fn parse_conversations(record: Record, format: Format) -> Result<RawSample, String> {
    parse_turns(
        record.conversations,
        &record.near_misses,
        &CONVERSATIONS,
        format,
    )
}

fn parse_turns<const K: Keys>(
    list: Option<Messages<K>>,
    near_misses: &[(String, &'static str)],
    keys: &ChatKeys,
    format: Format,
) -> Result<RawSample, String> {
    let name = keys.list;
    let list = match list {
        None => return Err(missing_key(name, format, near_misses)),
        Some(Messages::List(list)) => list,
        Some(Messages::Other(kind)) => {
            return Err(format!("\"{name}\" is not a list (got {kind})"));
        }
    };
    if list.is_empty() {
        return Err(format!("\"{name}\" is empty"));
    }
    let mut messages = Vec::with_capacity(list.len());
    let mut untrained = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        let turn = match item {
            Message::Other(kind) => {
                return Err(format!("{name}[{i}] is not an object (got {kind})"));
            }
            Message::Object(turn) => turn,
        };
        let role = string_of(turn.role, name, i, keys.role)?;
        let Some(&(_, role)) = keys.roles.iter().find(|(word, _)| *word == role) else {
            let hint = match closest(&role, keys.roles.iter().map(|(word, _)| *word)) {
                Some(word) => format!("; did you mean {word:?}?"),
                None => String::new(),
            };
            return Err(format!(
                "{name}[{i}].{} {} is not {}{hint}",
                keys.role,
                shown_role(&role),
                keys.roles_shown
            ));
        };
        let content = string_of(turn.content, name, i, keys.content)?;
        if !weight_is_one(turn.weight, name, i)? && role == "assistant" {
            untrained.push(i);
        }
        debug_assert!(ROLES.contains(&role));
        messages.push(ChatMessage::new(role, content));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("conversation has no assistant turn".into());
    }
    Ok(RawSample::Chat {
        messages,
        untrained,
    })
}

/// The string at `list[i].key`, or why there is none.
fn string_of(field: Option<Field>, list: &str, i: usize, key: &str) -> Result<String, String> {
    match field {
        None => Err(format!("{list}[{i}] has no \"{key}\"")),
        Some(Field::Str(s)) => Ok(s),
        Some(Field::Other(kind)) => Err(format!("{list}[{i}].{key} is not a string (got {kind})")),
    }
}

/// Whether `list[i].weight` is 1 (or absent) rather than 0; any other
/// value is an error.
fn weight_is_one(weight: Option<Weight>, list: &str, i: usize) -> Result<bool, String> {
    match weight {
        None => Ok(true),
        Some(Weight::Number(1.0)) => Ok(true),
        Some(Weight::Number(0.0)) => Ok(false),
        Some(Weight::Number(w)) => Err(format!("{list}[{i}].weight must be 0 or 1 (got {w})")),
        Some(Weight::Other(kind)) => Err(format!("{list}[{i}].weight must be 0 or 1 (got {kind})")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_record;
    use super::*;
    use crate::data::Shape;

    fn parse(line: &str) -> Result<(Shape, RawSample), String> {
        parse_record(line, Format::Auto)
    }

    #[test]
    fn sharegpt_roles_become_chat_roles() {
        let line = r#"{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "user", "value": "r"}, {"from": "assistant", "value": "b"}]}"#;
        let turn = ChatMessage::new;
        assert_eq!(
            parse(line).unwrap(),
            (
                Shape::ShareGpt,
                RawSample::chat(vec![
                    turn("system", "s"),
                    turn("user", "q"),
                    turn("assistant", "a"),
                    turn("user", "r"),
                    turn("assistant", "b"),
                ])
            )
        );
    }

    #[test]
    fn weights_pick_the_assistant_messages_that_are_targets() {
        let line = r#"{"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a", "weight": 0}, {"role": "user", "content": "r"}, {"role": "assistant", "content": "b", "weight": 1.0}, {"role": "assistant", "content": "c", "weight": 0.0}]}"#;
        let (shape, raw) = parse(line).unwrap();
        assert_eq!(shape, Shape::Chat);
        let RawSample::Chat { untrained, .. } = raw else {
            panic!("{raw:?}")
        };
        assert_eq!(untrained, [1, 4]);
    }

    #[test]
    fn bad_turns_name_the_message_and_the_field() {
        let err = |line: &str| parse(line).unwrap_err();
        assert_eq!(
            err(r#"{"conversations": [{"from": "humman", "value": "q"}]}"#),
            "conversations[0].from \"humman\" is not system, human, gpt, user or assistant; did you mean \"human\"?"
        );
        assert_eq!(
            err(r#"{"conversations": [{"from": "tool", "value": "q"}]}"#),
            "conversations[0].from \"tool\" is not system, human, gpt, user or assistant"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "asistant", "content": "q"}]}"#),
            "messages[0].role \"asistant\" is not system, user or assistant; did you mean \"assistant\"?"
        );
        assert_eq!(
            err(r#"{"conversations": [{"role": "user", "content": "q"}]}"#),
            "conversations[0] has no \"from\""
        );
        assert_eq!(
            err(r#"{"conversations": [{"from": "gpt", "value": 3}]}"#),
            "conversations[0].value is not a string (got a number)"
        );
        assert_eq!(
            err(r#"{"conversations": {"from": "gpt"}}"#),
            "\"conversations\" is not a list (got an object)"
        );
        assert_eq!(
            err(r#"{"conversations": []}"#),
            "\"conversations\" is empty"
        );
        assert_eq!(
            err(r#"{"conversations": [{"from": "human", "value": "q"}]}"#),
            "conversation has no assistant turn"
        );
        for (weight, got) in [
            ("2", "2"),
            ("0.5", "0.5"),
            ("-1", "-1"),
            ("\"0\"", "a string"),
            ("true", "a boolean"),
            ("null", "null"),
            ("[1]", "a list"),
        ] {
            assert_eq!(
                err(&format!(
                    r#"{{"messages": [{{"role": "user", "content": "q"}}, {{"role": "assistant", "content": "a", "weight": {weight}}}]}}"#
                )),
                format!("messages[1].weight must be 0 or 1 (got {got})")
            );
        }
        assert_eq!(
            parse_record(r#"{"conversation": [], "messages": []}"#, Format::ShareGpt).unwrap_err(),
            "no \"conversations\" key (format: sharegpt); did you mean \"conversations\" for \"conversation\"?"
        );
    }
}
