//! The JSON of one line decoded straight into the few fields a sample can
//! use ([`Record`]): the strings are kept, any other value is skipped and
//! only its kind is remembered (for "is not a string (got a list)"), keys
//! the shapes do not use are skipped, and of all the keys only the first
//! [`KEYS_SHOWN`] in sorted order are named (plus at most as many unknown
//! keys that look like misspellings of known ones, each a few characters,
//! for "did you mean"). So a record costs about its
//! own size in memory, whatever it holds (a generic JSON tree costs 10–20×
//! the text of a list of small objects).
//!
//! Not here: what the fields must hold and the messages for bad lines
//! ([`super`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::KEYS_SHOWN;
use crate::suggest::closest;

/// Every key a shape reads, for "did you mean" on unknown keys.
pub(super) const RECORD_KEYS: [&str; 8] = [
    "text",
    "prompt",
    "completion",
    "messages",
    "instruction",
    "input",
    "output",
    "conversations",
];

/// A whole line: an object, or the kind of value it is instead.
pub(super) enum Line {
    Object(Box<Record>),
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
    pub(super) messages: Option<Messages<OPENAI>>,
    pub(super) instruction: Option<Field>,
    pub(super) input: Option<Field>,
    pub(super) output: Option<Field>,
    pub(super) conversations: Option<Messages<SHAREGPT>>,
    /// Unknown keys close to a key of [`RECORD_KEYS`] and that key, in the
    /// order met (at most [`KEYS_SHOWN`]).
    pub(super) near_misses: Vec<(String, &'static str)>,
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

    /// Remembers `key` when it is not one a shape reads but looks like a
    /// misspelling of one.
    fn note_near_miss(&mut self, key: &str) {
        if self.near_misses.len() < KEYS_SHOWN
            && let Some(known) = closest(key, RECORD_KEYS)
        {
            self.near_misses.push((key.to_owned(), known));
        }
    }
}

/// A value where a string is wanted.
pub(super) enum Field {
    Str(String),
    /// Another kind of value (skipped): "a number", "null", ...
    Other(&'static str),
}

/// The value of `"weight"` in a message: a number, or the kind of value
/// it is instead.
pub(super) enum Weight {
    Number(f64),
    Other(&'static str),
}

/// Which keys of a message object hold its role and content: OpenAI's
/// `role` and `content`, or ShareGPT's `from` and `value`.
pub(super) type Keys = bool;
/// `"messages"`: `role`, `content`.
pub(super) const OPENAI: Keys = false;
/// `"conversations"`: `from`, `value`.
pub(super) const SHAREGPT: Keys = true;

/// The value of `"messages"` or `"conversations"`.
pub(super) enum Messages<const K: Keys> {
    List(Vec<Message<K>>),
    Other(&'static str),
}

/// One item of `"messages"` or `"conversations"`.
pub(super) enum Message<const K: Keys> {
    Object(Turn),
    Other(&'static str),
}

/// The keys of a message object that a shape reads: its role (`role` or
/// `from`), its content (`content` or `value`) and its `weight`.
#[derive(Default)]
pub(super) struct Turn {
    pub(super) role: Option<Field>,
    pub(super) content: Option<Field>,
    pub(super) weight: Option<Weight>,
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

impl<'de, const K: Keys> Deserialize<'de> for Message<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Message<K>, D::Error> {
        struct MessageVisitor<const K: Keys>;
        impl<'de, const K: Keys> Visitor<'de> for MessageVisitor<K> {
            type Value = Message<K>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_scalars!(Message::Other);
            other_string!(Message::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Message<K>, A::Error> {
                skip_seq(seq).map(|()| Message::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<K>, A::Error> {
                let mut turn = Turn::default();
                while let Some(MessageKey::<K>(key)) = map.next_key()? {
                    match key {
                        Key::Role => turn.role = Some(map.next_value()?),
                        Key::Content => turn.content = Some(map.next_value()?),
                        Key::Weight => turn.weight = Some(map.next_value()?),
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Message::Object(turn))
            }
        }
        deserializer.deserialize_any(MessageVisitor::<K>)
    }
}

/// A key of a message object, read without being kept.
enum Key {
    Role,
    Content,
    Weight,
    Other,
}

/// A key of a message object whose keys are `K`.
struct MessageKey<const K: Keys>(Key);

impl<'de, const K: Keys> Deserialize<'de> for MessageKey<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MessageKey<K>, D::Error> {
        struct KeyVisitor<const K: Keys>;
        impl<const K: Keys> Visitor<'_> for KeyVisitor<K> {
            type Value = MessageKey<K>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<MessageKey<K>, E> {
                Ok(MessageKey(match (K, v) {
                    (OPENAI, "role") | (SHAREGPT, "from") => Key::Role,
                    (OPENAI, "content") | (SHAREGPT, "value") => Key::Content,
                    (_, "weight") => Key::Weight,
                    _ => Key::Other,
                }))
            }
        }
        deserializer.deserialize_str(KeyVisitor::<K>)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Weight, D::Error> {
        struct WeightVisitor;
        impl<'de> Visitor<'de> for WeightVisitor {
            type Value = Weight;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_string!(Weight::Other);
            fn visit_bool<E>(self, _: bool) -> Result<Weight, E> {
                Ok(Weight::Other("a boolean"))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Weight, E> {
                Ok(Weight::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Weight, E> {
                Ok(Weight::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Weight, E> {
                Ok(Weight::Number(v))
            }
            fn visit_unit<E>(self) -> Result<Weight, E> {
                Ok(Weight::Other("null"))
            }
            fn visit_none<E>(self) -> Result<Weight, E> {
                Ok(Weight::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Weight, A::Error> {
                skip_seq(seq).map(|()| Weight::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Weight, A::Error> {
                skip_map(map).map(|()| Weight::Other("an object"))
            }
        }
        deserializer.deserialize_any(WeightVisitor)
    }
}

impl<'de, const K: Keys> Deserialize<'de> for Messages<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Messages<K>, D::Error> {
        struct MessagesVisitor<const K: Keys>;
        impl<'de, const K: Keys> Visitor<'de> for MessagesVisitor<K> {
            type Value = Messages<K>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_scalars!(Messages::Other);
            other_string!(Messages::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages<K>, A::Error> {
                let mut list = Vec::new();
                while let Some(message) = seq.next_element()? {
                    list.push(message);
                }
                Ok(Messages::List(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Messages<K>, A::Error> {
                skip_map(map).map(|()| Messages::Other("an object"))
            }
        }
        deserializer.deserialize_any(MessagesVisitor::<K>)
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
                        "instruction" => record.instruction = Some(map.next_value()?),
                        "input" => record.input = Some(map.next_value()?),
                        "output" => record.output = Some(map.next_value()?),
                        "conversations" => record.conversations = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            record.note_near_miss(&key);
                        }
                    }
                    record.note_key(key);
                }
                Ok(Line::Object(Box::new(record)))
            }
        }
        deserializer.deserialize_any(LineVisitor)
    }
}
