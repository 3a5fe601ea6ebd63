//! The machinery for reading a located YAML tree: sections read against a
//! schema, typed scalars, alternatives, and path resolution. Every getter
//! reports its own problems and says whether the key was absent, invalid
//! or given.

use std::path::{Component, Path, PathBuf};

use super::SpecProblem;
use super::schema::{Schema, unknown_key, unknown_value};
use super::types::{PathOrUrl, URL_SCHEMES};
use super::yaml::{Kind, Node, Pos};

/// The outcome of reading one key.
pub(super) enum Field<T> {
    /// Not there, or empty (`key:` / `~`): the default applies.
    Absent,
    /// There but wrong; a problem has been reported.
    Invalid,
    Given(T),
}

impl<T> Field<T> {
    pub(super) fn or(self, default: T) -> T {
        match self {
            Field::Given(value) => value,
            Field::Absent | Field::Invalid => default,
        }
    }

    pub(super) fn given(self) -> Option<T> {
        match self {
            Field::Given(value) => Some(value),
            Field::Absent | Field::Invalid => None,
        }
    }

    pub(super) fn is_given_and(&self, f: impl FnOnce(&T) -> bool) -> bool {
        matches!(self, Field::Given(value) if f(value))
    }

    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Field::Given(value) => Field::Given(f(value)),
            Field::Absent => Field::Absent,
            Field::Invalid => Field::Invalid,
        }
    }
}

/// One key of a mapping, as the user spelt it.
pub(super) struct Entry<'n> {
    pub canonical: &'static str,
    pub spelled: String,
    pub key: &'n Node,
    pub value: &'n Node,
}

/// A mapping read against its schema.
pub(super) struct Section<'n> {
    /// Dotted path, `""` for the document.
    pub path: String,
    /// Where a missing key of this section is reported.
    pub pos: Pos,
    pub entries: Vec<Entry<'n>>,
    /// Not a mapping (already reported): missing keys are not reported again.
    pub broken: bool,
}

impl<'n> Section<'n> {
    /// The entry for `key` (or its alias), unless absent or empty.
    pub(super) fn entry(&self, key: &str) -> Option<&Entry<'n>> {
        self.entries
            .iter()
            .find(|entry| entry.canonical == key && !entry.value.is_null())
    }

    pub(super) fn path_to(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub(super) struct Reader<'a> {
    pub source: &'a str,
    pub file: &'a str,
    pub base_dir: &'a Path,
    pub problems: Vec<SpecProblem>,
}

impl Reader<'_> {
    pub(super) fn report(&mut self, pos: Pos, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(SpecProblem {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            path: path.into(),
            message: message.into(),
        });
    }

    // ----- mappings ------------------------------------------------------

    /// Reads `node` as a mapping with `schema`'s keys, reporting a value that
    /// is not a mapping, unknown keys, and keys given twice.
    pub(super) fn section<'n>(
        &mut self,
        path: String,
        pos: Pos,
        node: Option<&'n Node>,
        schema: &Schema,
    ) -> Section<'n> {
        let mut section = Section {
            path,
            pos,
            entries: Vec::new(),
            broken: false,
        };
        let entries = match node.map(|node| (node, &node.kind)) {
            None | Some((_, Kind::Null)) => return section,
            Some((_, Kind::Map(entries))) => entries,
            Some((node, _)) => {
                let what = if section.path.is_empty() {
                    "the spec to be a mapping"
                } else {
                    "a mapping"
                };
                self.report(
                    node.pos,
                    section.path.clone(),
                    format!(
                        "expected {what} with keys {}, got {node}",
                        schema.keys.join(", ")
                    ),
                );
                section.broken = true;
                return section;
            }
        };
        for (key, value) in entries {
            let Some(spelled) = key.scalar_text(self.source) else {
                let message = format!("expected a key name, got {key}");
                self.report(key.pos, section.path.clone(), message);
                continue;
            };
            let path = section.path_to(&spelled);
            let canonical = schema
                .keys
                .iter()
                .find(|&&known| known == spelled)
                .or_else(|| {
                    schema
                        .aliases
                        .iter()
                        .find(|(alias, _)| *alias == spelled)
                        .map(|(_, key)| key)
                })
                .copied();
            let Some(canonical) = canonical else {
                let message = unknown_key(&section.path, schema, &spelled);
                self.report(key.pos, path, message);
                continue;
            };
            if let Some(first) = section.entries.iter().find(|e| e.canonical == canonical) {
                let message = if first.spelled == spelled {
                    format!("given twice (first at line {})", first.key.pos.line)
                } else {
                    format!(
                        "same setting as {} at line {}; give only one",
                        section.path_to(&first.spelled),
                        first.key.pos.line
                    )
                };
                self.report(key.pos, path, message);
                continue;
            }
            section.entries.push(Entry {
                canonical,
                spelled,
                key,
                value,
            });
        }
        section
    }

    /// The sub-section `key` of `parent` (empty if not there).
    pub(super) fn child<'n>(
        &mut self,
        parent: &Section<'n>,
        key: &str,
        schema: &Schema,
    ) -> Section<'n> {
        match parent.entries.iter().find(|entry| entry.canonical == key) {
            Some(entry) => self.section(
                parent.path_to(&entry.spelled),
                entry.key.pos,
                Some(entry.value),
                schema,
            ),
            None => Section {
                path: parent.path_to(key),
                pos: parent.pos,
                entries: Vec::new(),
                broken: parent.broken,
            },
        }
    }

    /// Which of two alternative keys is given. Both: a problem at the
    /// second (in document order), and the first is read.
    pub(super) fn one_of(
        &mut self,
        section: &Section,
        a: &'static str,
        b: &'static str,
    ) -> Option<&'static str> {
        match (section.entry(a), section.entry(b)) {
            (Some(x), Some(y)) => {
                let (first, second) = if x.key.pos <= y.key.pos {
                    (x, y)
                } else {
                    (y, x)
                };
                let message = format!(
                    "conflicts with {} at line {}; give only one of {a} or {b}",
                    section.path_to(&first.spelled),
                    first.key.pos.line
                );
                let (pos, path, canonical) = (
                    second.key.pos,
                    section.path_to(&second.spelled),
                    first.canonical,
                );
                self.report(pos, path, message);
                Some(canonical)
            }
            (Some(_), None) => Some(a),
            (None, Some(_)) => Some(b),
            (None, None) => None,
        }
    }

    // ----- scalars -------------------------------------------------------

    /// An integer in `min..=max`.
    pub(super) fn int(
        &mut self,
        section: &Section,
        key: &str,
        min: i128,
        max: i128,
    ) -> Field<i128> {
        let Some(entry) = section.entry(key) else {
            return Field::Absent;
        };
        let path = section.path_to(&entry.spelled);
        let node = entry.value;
        // Wide ranges read better as the side that was crossed: "at least
        // 1", or "at most 1000000000" for a value past it. A value that is
        // no integer at all (a float, `1e30`, a number past i128) is told
        // both ends.
        let wide = max > 4096;
        let (must, expected) = if wide {
            (
                format!("at least {min}"),
                format!("an integer between {min} and {max}"),
            )
        } else {
            (
                format!("between {min} and {max}"),
                format!("an integer between {min} and {max}"),
            )
        };
        match node.kind {
            Kind::Int(value) if (min..=max).contains(&value) => Field::Given(value),
            Kind::Int(value) => {
                let must = if value > max && wide {
                    format!("at most {max}")
                } else {
                    must
                };
                self.report(node.pos, path, format!("must be {must}, got {value}"));
                Field::Invalid
            }
            _ => {
                self.report(node.pos, path, format!("expected {expected}, got {node}"));
                Field::Invalid
            }
        }
    }

    /// A finite number (integers too) for which `ok` holds; `requirement`
    /// says which ones, for messages ("greater than 0").
    pub(super) fn float(
        &mut self,
        section: &Section,
        key: &str,
        requirement: &str,
        ok: fn(f64) -> bool,
    ) -> Field<f64> {
        let Some(entry) = section.entry(key) else {
            return Field::Absent;
        };
        let path = section.path_to(&entry.spelled);
        let node = entry.value;
        let value = match node.kind {
            Kind::Int(value) => value as f64,
            Kind::Float(value) => value,
            _ => {
                let of = if requirement.starts_with("at least") {
                    "of "
                } else {
                    ""
                };
                self.report(
                    node.pos,
                    path,
                    format!("expected a number {of}{requirement}, got {node}"),
                );
                return Field::Invalid;
            }
        };
        if !value.is_finite() {
            self.report(
                node.pos,
                path,
                format!("must be a finite number, got {node}"),
            );
            Field::Invalid
        } else if !ok(value) {
            self.report(node.pos, path, format!("must be {requirement}, got {node}"));
            Field::Invalid
        } else {
            Field::Given(value)
        }
    }

    pub(super) fn boolean(&mut self, section: &Section, key: &str) -> Field<bool> {
        let Some(entry) = section.entry(key) else {
            return Field::Absent;
        };
        match entry.value.kind {
            Kind::Bool(value) => Field::Given(value),
            _ => {
                let path = section.path_to(&entry.spelled);
                let message = format!("expected true or false, got {}", entry.value);
                self.report(entry.value.pos, path, message);
                Field::Invalid
            }
        }
    }

    /// Any scalar as text (`name: 2024` is the name "2024").
    pub(super) fn text<'n>(
        &mut self,
        section: &Section<'n>,
        key: &str,
        what: &str,
    ) -> Field<Scalar<'n>> {
        let Some(entry) = section.entry(key) else {
            return Field::Absent;
        };
        let path = section.path_to(&entry.spelled);
        match entry.value.scalar_text(self.source) {
            Some(text) => Field::Given(Scalar {
                text,
                node: entry.value,
                path,
            }),
            None => {
                let message = format!("expected {what}, got {}", entry.value);
                self.report(entry.value.pos, path, message);
                Field::Invalid
            }
        }
    }

    /// One of a closed set of words.
    pub(super) fn word<T>(
        &mut self,
        section: &Section,
        key: &str,
        names: &[&str],
        parse: fn(&str) -> Option<T>,
    ) -> Field<T> {
        let what = format!("one of {}", names.join(", "));
        let scalar = match self.text(section, key, &what) {
            Field::Given(scalar) => scalar,
            Field::Absent => return Field::Absent,
            Field::Invalid => return Field::Invalid,
        };
        match parse(&scalar.text) {
            Some(value) => Field::Given(value),
            None => {
                let message = unknown_value(&scalar.text, names);
                self.report(scalar.node.pos, scalar.path, message);
                Field::Invalid
            }
        }
    }

    /// A local path (resolved against the spec's folder) or a URL.
    pub(super) fn path_or_url(&mut self, section: &Section, key: &str) -> Field<PathOrUrl> {
        let scalar = match self.text(section, key, "a path or URL") {
            Field::Given(scalar) => scalar,
            Field::Absent => return Field::Absent,
            Field::Invalid => return Field::Invalid,
        };
        match resolve(&scalar.text, self.base_dir) {
            Ok(location) => Field::Given(location),
            Err(message) => {
                self.report(scalar.node.pos, scalar.path, message);
                Field::Invalid
            }
        }
    }
}

/// A scalar value read as text.
pub(super) struct Scalar<'n> {
    pub text: String,
    pub node: &'n Node,
    /// The key path, as spelt.
    pub path: String,
}

/// Values already checked to be in range.
pub(super) fn as_u32(value: i128) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

pub(super) fn as_u64(value: i128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Resolves a path-valued key: URLs with a known scheme are kept as they
/// are; relative paths are joined to `base_dir`, and `.` and `..` are
/// removed lexically (no file-system access, symbolic links not followed).
pub(super) fn resolve(text: &str, base_dir: &Path) -> Result<PathOrUrl, String> {
    if text.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some((scheme, rest)) = text.split_once("://")
        && !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        let known = URL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str());
        return if !known {
            Err(format!(
                "unsupported URL scheme {scheme}://; use a local path or a URL starting with {}",
                URL_SCHEMES
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else if rest.is_empty() {
            Err(format!("nothing after {scheme}://"))
        } else {
            Ok(PathOrUrl::Url(text.to_owned()))
        };
    }
    let path = Path::new(text);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    // Lexically, like `cd`: `a/./b` is `a/b`, `a/../b` is `b`.
    let mut cleaned = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match cleaned.components().next_back() {
                Some(Component::Normal(_)) => {
                    cleaned.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::ParentDir | Component::CurDir) | None => cleaned.push(".."),
            },
            other => cleaned.push(other),
        }
    }
    if cleaned.as_os_str().is_empty() {
        cleaned.push(".");
    }
    Ok(PathOrUrl::Path(cleaned))
}
