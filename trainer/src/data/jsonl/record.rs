//! The JSON of one line decoded straight into the few fields a sample can
//! use ([`Record`]): the strings are kept, any other value is skipped and
//! only its kind is remembered (for "is not a string (got a list)"), keys
//! the shapes do not use are skipped, and of all the keys only the first
//! [`KEYS_SHOWN`] in sorted order are named. So a record costs about its
//! own size in memory, whatever it holds (a generic JSON tree costs 10–20×
//! the text of a list of small objects).
//!
//! Not here: what the fields must hold and the messages for bad lines
//! ([`super`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::KEYS_SHOWN;

/// A whole line: an object, or the kind of value it is instead.
pub(super) enum Line {
    Object(Record),
    Other(&'static str),
}

/// The keys of a line's object that the shapes use; the others are only
/// named. A key given twice keeps its last value, as in a JSON object.
#[derive(Default)]
pub(super) struct Record {
    /// The first [`KEYS_SHOWN`] keys of the object in sorted order.
    pub(super) keys: BTreeSet<String>,
    /// The object has more keys than `keys` holds.
    pub(super) more_keys: bool,
    pub(super) text: Option<Field>,
    pub(super) prompt: Option<Field>,
    pub(super) completion: Option<Field>,
    pub(super) messages: Option<Messages>,
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
pub(super) enum Field {
    Str(String),
    /// Another kind of value (skipped): "a number", "null", ...
    Other(&'static str),
}

/// The value of `"messages"`.
pub(super) enum Messages {
    List(Vec<Message>),
    Other(&'static str),
}

/// One item of `"messages"`.
pub(super) enum Message {
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
