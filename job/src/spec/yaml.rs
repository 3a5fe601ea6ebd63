//! A YAML document as a tree of nodes that know where they are.
//!
//! serde-saphyr does the YAML work (syntax, anchors and aliases, merge keys,
//! scalar resolution per the YAML 1.2 core schema) and hands every node to
//! [`serde_saphyr::Spanned`], which records its line and column. The spec
//! reader walks this tree by hand instead of deriving `Deserialize` for the
//! spec types, so that it can report every problem at once, each at the
//! key or value it concerns, with its own wording.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, MessageFormatter, NonFiniteFloatPolicy, Spanned};

/// A 1-based line and column (in characters) in the spec text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// The start of the document, for problems that belong nowhere else.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// One YAML node: where it is used, and what it is.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Node {
    /// Where the node appears (for an alias: the `*alias`).
    pub pos: Pos,
    /// The node's text as a byte range of the source, when known (for an
    /// alias: the anchored definition's).
    pub span: Option<(usize, usize)>,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; repeated keys are kept (the reader reports them).
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// The text of a scalar as a string: strings as they are, other scalars
    /// as written in the source (`1.10` stays `1.10`). `None` for null,
    /// lists and mappings.
    pub fn scalar_text(&self, source: &str) -> Option<String> {
        let written = || {
            self.span
                .and_then(|(start, end)| source.get(start..end))
                .map(str::to_owned)
        };
        match &self.kind {
            Kind::Str(text) => Some(text.clone()),
            Kind::Bool(value) => Some(written().unwrap_or_else(|| value.to_string())),
            Kind::Int(value) => Some(written().unwrap_or_else(|| value.to_string())),
            Kind::Float(value) => Some(written().unwrap_or_else(|| format_float(*value))),
            Kind::Null | Kind::Seq(_) | Kind::Map(_) => None,
        }
    }
}

/// Describes a node for messages: `0`, `0.5`, `true`, `"eight"`, `a list`.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Null => f.write_str("nothing"),
            Kind::Bool(value) => write!(f, "{value}"),
            Kind::Int(value) => write!(f, "{value}"),
            Kind::Float(value) => f.write_str(&format_float(*value)),
            Kind::Str(text) => write!(f, "{text:?}"),
            Kind::Seq(_) => f.write_str("a list"),
            Kind::Map(_) => f.write_str("a mapping"),
        }
    }
}

/// A float as YAML would write it: `0.5`, `1e-8`, `.inf`, `.nan`.
pub(super) fn format_float(value: f64) -> String {
    if value.is_nan() {
        ".nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { ".inf" } else { "-.inf" }.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// A YAML syntax error: where, and what (lowercase, no location inside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. `Ok(None)` for an empty document (or a lone `~`).
pub(super) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let options = serde_saphyr::options! {
        // The reader says which numbers are allowed; `.nan` is its problem.
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
        // Repeated keys reach the reader, which reports them with both lines.
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        // YAML 1.2 booleans only: `yes`, `no`, `on`, `off` stay strings.
        strict_booleans: true,
        with_snippet: false,
    };
    match serde_saphyr::from_str_with_options::<Option<Spanned<Raw>>>(text, options) {
        Ok(root) => Ok(root.map(|raw| convert(raw, Pos::START))),
        Err(error) => {
            let pos = error.location().and_then(position).unwrap_or(Pos::START);
            let message = serde_saphyr::UserMessageFormatter.format_message(&error);
            Err(SyntaxError {
                pos,
                message: message.trim_end_matches('.').to_owned(),
            })
        }
    }
}

fn position(location: serde_saphyr::Location) -> Option<Pos> {
    let line = u32::try_from(location.line()).ok()?;
    let column = u32::try_from(location.column()).ok()?;
    (line > 0 && column > 0).then_some(Pos { line, column })
}

fn convert(raw: Spanned<Raw>, parent: Pos) -> Node {
    let pos = position(raw.referenced).unwrap_or(parent);
    let span = raw.defined.span();
    let span = match (span.byte_offset(), span.byte_len()) {
        (Some(offset), Some(len)) if position(raw.defined).is_some() => usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset + len).ok()),
        _ => None,
    };
    let kind = match raw.value {
        Raw::Null => Kind::Null,
        Raw::Bool(value) => Kind::Bool(value),
        Raw::Int(value) => Kind::Int(value),
        Raw::Float(value) => Kind::Float(value),
        Raw::Str(text) => Kind::Str(text),
        Raw::Seq(items) => Kind::Seq(items.into_iter().map(|item| convert(item, pos)).collect()),
        Raw::Map(entries) => Kind::Map(
            entries
                .into_iter()
                .map(|(key, value)| {
                    let key = convert(key, pos);
                    let value = convert(value, key.pos);
                    (key, value)
                })
                .collect(),
        ),
    };
    Node { pos, span, kind }
}

/// What serde-saphyr's `deserialize_any` yields, every child with its span.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Raw, E> {
        Ok(Raw::Int(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Raw, E> {
        Ok(Raw::Int(value.into()))
    }

    fn visit_i128<E>(self, value: i128) -> Result<Raw, E> {
        Ok(Raw::Int(value))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Raw, E> {
        // Beyond i128 nothing in a spec is valid anyway: keep it as a float
        // so that messages still show the number.
        Ok(i128::try_from(value).map_or(Raw::Float(value as f64), Raw::Int))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Raw, E> {
        Ok(Raw::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Raw, E> {
        Ok(Raw::Str(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Raw, E> {
        Ok(Raw::Str(value))
    }

    fn visit_bytes<E: de::Error>(self, _value: &[u8]) -> Result<Raw, E> {
        Err(E::custom("binary values are not allowed in a job spec"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Raw::Map(entries))
    }
}
