//! Command-line overrides of a spec's keys, as torchtune's `tune run ...
//! key=value`: `training.max_steps=20`, `lora.r=4`,
//! `lora.target_modules=[q_proj, v_proj]`.
//!
//! Each override is written into the spec's text: its value in place of
//! the file's value for that key (matched by canonical name, so
//! `lora.r=4` replaces a file's `lora_r: 8`), or as a new key at the end
//! of its section, or as a new section (`lora: {r: 4}`) at the end of the
//! document. The text the reader then checks is therefore the text that
//! is stored, submitted and run, and it is checked exactly as a file is:
//! an unknown key gets the same did-you-mean, a wrong value the same type
//! error. [`Overridden::locate`] then moves every problem back to where
//! it came from: a problem in the file keeps the file's line and column,
//! one in an override's text names the override instead
//! (`override 2 (lora.r=abc): lora.r: expected an integer ...`). Lines
//! the file had keep their numbers where values are replaced (a
//! multi-line value becomes one line and blank ones).
//!
//! Values are YAML flow values: a scalar (`20`, `3e-4`, `cosine`,
//! `"a, b"`), a list `[a, b]` or a mapping `{k: v}`; an empty value
//! (`key=`) or `~` clears a key, so that its default applies (or its
//! alternative: `model.preset=~ model.path=./m`). A relative path given
//! to a path-valued key (`model.path`, `dataset.train`,
//! `dataset.validation`, `lora.init_adapter`, `checkpoint.storage`,
//! `output.dir`) is relative to the current directory, as every path on a
//! command line, and is written in absolute.
//!
//! A key the file gives through an alias or a merge key (`<<: *base`) is
//! not overridden (the edit would change the anchor's other uses too): it
//! is a problem naming the override.
//!
//! Not here: reading the file ([`JobSpec::from_file_with_overrides`]),
//! checking values (`validate`).
//!
//! [`JobSpec::from_file_with_overrides`]: super::JobSpec::from_file_with_overrides

use std::ops::Range;
use std::path::Path;

use super::schema::{ROOT, Schema, section_schema};
use super::yaml::{self, Kind, Node, Pos};
use super::{SpecError, SpecProblem, document_problem};

/// The keys whose values are paths (relative ones resolved against the
/// spec's folder in a file, against the current directory in an override).
const PATH_KEYS: &[&str] = &[
    "model.path",
    "dataset.train",
    "dataset.validation",
    "lora.init_adapter",
    "checkpoint.storage",
    "output.dir",
];

/// One `key.path=value` from the command line, ready to write in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Override {
    /// 1-based, in the order given.
    index: usize,
    /// As given, for messages.
    given: String,
    /// The key path, as spelt.
    keys: Vec<String>,
    /// The value as flow YAML text (one line).
    value: String,
}

impl Override {
    /// Reads the `index`th override (1-based) `given`; relative paths for
    /// path-valued keys are joined to `cwd`.
    fn parse(index: usize, given: &str, cwd: &Path) -> Result<Override, SpecProblem> {
        let problem = |path: &str, message: String| SpecProblem {
            file: label(index, given),
            line: 0,
            column: 0,
            path: path.to_owned(),
            message,
        };
        let Some((key, value)) = given.split_once('=') else {
            return Err(problem(
                "",
                "expected key.path=value, e.g. training.max_steps=20".to_owned(),
            ));
        };
        let key = key.trim();
        let keys: Vec<String> = key.split('.').map(str::to_owned).collect();
        let well_formed = |k: &String| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !keys.iter().all(well_formed) {
            return Err(problem(
                "",
                format!(
                    "expected key.path=value with a key path of names joined by dots (letters, digits, _ and -), got {key:?}"
                ),
            ));
        }
        let node = yaml::parse(value)
            .map_err(|error| problem(key, format!("the value is not YAML: {}", error.message)))?;
        let mut value = match &node {
            None => "~".to_owned(),
            Some(node) => render(node, value),
        };
        if let Some(Node {
            kind: Kind::Str(text),
            ..
        }) = &node
            && PATH_KEYS.contains(&canonical_path(&keys).as_str())
            && !is_url(text)
            && Path::new(text).is_relative()
        {
            value = render_str(&cwd.join(text).display().to_string());
        }
        Ok(Override {
            index,
            given: given.to_owned(),
            keys,
            value,
        })
    }
}

/// How problems in the `index`th override are located: `override 2
/// (lora.r=abc)`.
fn label(index: usize, given: &str) -> String {
    format!("override {index} ({given})")
}

/// A spec's text with overrides written in, and where each part of it
/// came from.
#[derive(Debug)]
pub(super) struct Overridden {
    /// The file's text as read.
    source: String,
    /// The file's name, for messages.
    file: String,
    edited: Edited,
    /// Each override as given, in order.
    given: Vec<String>,
}

/// Writes `overrides` (`key.path=value` each) into `source`, the text of
/// spec `file`. Relative paths in path-valued overrides are joined to
/// `cwd`. An override that is not `key.path=value`, whose value is not
/// YAML, or that would change an aliased part of the file is a problem;
/// so is a YAML syntax error in the file itself (located in the file).
pub(super) fn apply(
    source: &str,
    file: &str,
    overrides: &[&str],
    cwd: &Path,
) -> Result<Overridden, SpecError> {
    yaml::parse(source).map_err(|error| document_problem(file, error.pos, error.message))?;
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    for (i, given) in overrides.iter().enumerate() {
        match Override::parse(i + 1, given, cwd) {
            Ok(o) => parsed.push(o),
            Err(problem) => problems.push(problem),
        }
    }
    let mut edited = Edited::new(source);
    if problems.is_empty() {
        for o in &parsed {
            let Ok(root) = yaml::parse(&edited.text) else {
                // Not expected: every edit keeps the text YAML. The reader
                // reports it, located.
                break;
            };
            if let Err(message) = write_in(&mut edited, root.as_ref(), o) {
                problems.push(SpecProblem {
                    file: label(o.index, &o.given),
                    line: 0,
                    column: 0,
                    path: o.keys.join("."),
                    message,
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(SpecError::Invalid {
            file: file.to_owned(),
            problems,
        });
    }
    Ok(Overridden {
        source: source.to_owned(),
        file: file.to_owned(),
        edited,
        given: overrides.iter().map(|&o| o.to_owned()).collect(),
    })
}

impl Overridden {
    /// The spec's text with the overrides in it.
    pub(super) fn text(&self) -> &str {
        &self.edited.text
    }

    /// `problems`, found in [`Overridden::text`], located where they came
    /// from: in the file (its own lines and columns) or in an override
    /// (`file` names it, line and column 0). File problems come first, in
    /// file order, then the overrides' in the order given. Messages that
    /// point at another line (`first at line 5`) are moved the same way.
    pub(super) fn locate(&self, problems: Vec<SpecProblem>) -> Vec<SpecProblem> {
        let text = Layout::new(&self.edited.text);
        let source = Layout::new(&self.source);
        let mut located: Vec<((usize, u32, u32), SpecProblem)> = problems
            .into_iter()
            .map(|mut problem| {
                let offset = text.offset_of(Pos {
                    line: problem.line,
                    column: problem.column,
                });
                problem.message = self.remap_lines(&problem.message, &text, &source);
                match self.edited.origin_at(offset) {
                    Origin::File(at) => {
                        let pos = source.pos_of(at);
                        problem.file = self.file.clone();
                        problem.line = pos.line;
                        problem.column = pos.column;
                        ((0, pos.line, pos.column), problem)
                    }
                    Origin::Override(index) => {
                        problem.file = label(index, &self.given[index - 1]);
                        problem.line = 0;
                        problem.column = 0;
                        ((index, 0, 0), problem)
                    }
                }
            })
            .collect();
        located.sort_by_key(|(order, _)| *order);
        located.into_iter().map(|(_, problem)| problem).collect()
    }

    /// `message` with each `at line N` (a line of the edited text) made
    /// `at line M` of the file, or `in override K`.
    fn remap_lines(&self, message: &str, text: &Layout, source: &Layout) -> String {
        const AT_LINE: &str = "at line ";
        let mut out = String::new();
        let mut rest = message;
        while let Some(found) = rest.find(AT_LINE) {
            let after = &rest[found + AT_LINE.len()..];
            let digits = after.chars().take_while(char::is_ascii_digit).count();
            let Ok(line) = after[..digits].parse::<u32>() else {
                out.push_str(&rest[..found + AT_LINE.len()]);
                rest = after;
                continue;
            };
            out.push_str(&rest[..found]);
            match self.edited.origin_at(text.first_word_of_line(line)) {
                Origin::File(at) => out.push_str(&format!("at line {}", source.pos_of(at).line)),
                Origin::Override(index) => out.push_str(&format!("in override {index}")),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }
}

/// Writes override `o` into `edited`, whose text parsed to `root`.
fn write_in(edited: &mut Edited, root: Option<&Node>, o: &Override) -> Result<(), String> {
    let Some(root) = root else {
        // An empty document: the override starts it.
        let mut line = String::new();
        if !edited.text.is_empty() && !edited.text.ends_with('\n') {
            line.push('\n');
        }
        line.push_str(&format!(
            "{}: {}\n",
            o.keys[0],
            nest(&o.keys[1..], &o.value)
        ));
        let end = edited.text.len();
        edited.replace(end..end, &line, o.index);
        return Ok(());
    };
    if !matches!(root.kind, Kind::Map(_)) {
        // Not a spec at all: the reader says so, at the file.
        return Ok(());
    }
    let layout = Layout::new(&edited.text);
    let mut map = root;
    let mut schema = Some(&ROOT);
    for (depth, key) in o.keys.iter().enumerate() {
        let Kind::Map(entries) = &map.kind else {
            unreachable!("only mappings are descended into")
        };
        let wanted = canonical(schema, key);
        let found = entries.iter().find(|(k, _)| {
            k.scalar_text(&edited.text)
                .is_some_and(|spelled| canonical(schema, &spelled) == wanted)
        });
        let rest = &o.keys[depth + 1..];
        let here = o.keys[..=depth].join(".");
        let Some((k, v)) = found else {
            let (at, text) = layout.new_entry(map, key, &nest(rest, &o.value))?;
            edited.replace(at..at, &text, o.index);
            return Ok(());
        };
        if !layout.own(k) {
            return Err(format!(
                "{here} comes from a merge key (<<) in the spec; set it in the file instead"
            ));
        }
        match &v.kind {
            Kind::Map(_) if !rest.is_empty() && layout.own(v) => {
                map = v;
                schema = if depth == 0 {
                    section_schema(wanted)
                } else {
                    None
                };
            }
            Kind::Map(_) if !rest.is_empty() => {
                return Err(format!(
                    "{here} is an alias in the spec; set {} in the file instead",
                    o.keys.join(".")
                ));
            }
            _ => {
                let (range, text) = layout.new_value(k, v, &nest(rest, &o.value))?;
                edited.replace(range, &text, o.index);
                return Ok(());
            }
        }
    }
    unreachable!("the loop returns at the last key")
}

/// `value` under `keys` as flow YAML: `{a: {b: value}}`.
fn nest(keys: &[String], value: &str) -> String {
    keys.iter()
        .rev()
        .fold(value.to_owned(), |inner, key| format!("{{{key}: {inner}}}"))
}

/// `key`'s canonical name in `schema` (itself when unknown or no schema).
fn canonical<'k>(schema: Option<&Schema>, key: &'k str) -> &'k str {
    let Some(schema) = schema else {
        return key;
    };
    if let Some(known) = schema.keys.iter().find(|&&known| known == key) {
        return known;
    }
    schema
        .aliases
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, known)| known)
}

/// The key path with canonical names (`lora.lora_r` → `lora.r`).
fn canonical_path(keys: &[String]) -> String {
    match keys {
        [section, key] => {
            let section = canonical(Some(&ROOT), section);
            format!("{section}.{}", canonical(section_schema(section), key))
        }
        _ => keys.join("."),
    }
}

/// Whether `text` starts with a URL scheme (`s3://`, `file://`, ...).
fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// A parsed value as one line of flow YAML that reads back the same:
/// numbers and booleans as written, strings plain when they can be,
/// quoted otherwise.
fn render(node: &Node, source: &str) -> String {
    match &node.kind {
        Kind::Null => "~".to_owned(),
        Kind::Str(text) => render_str(text),
        Kind::Bool(_) | Kind::Int(_) | Kind::Float(_) => node
            .scalar_text(source)
            .filter(|text| !text.contains('\n'))
            .unwrap_or_else(|| node.to_string()),
        Kind::Seq(items) => {
            let items: Vec<String> = items.iter().map(|item| render(item, source)).collect();
            format!("[{}]", items.join(", "))
        }
        Kind::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", render(k, source), render(v, source)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// A string as a plain scalar when it reads back as the same string in
/// block and flow context alike, double-quoted (JSON escapes, which YAML
/// reads) otherwise.
fn render_str(text: &str) -> String {
    let plain = !text.is_empty()
        && text.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '+' | '@' | ':')
        })
        && matches!(
            yaml::parse(text),
            Ok(Some(Node { kind: Kind::Str(ref read), .. })) if read == text
        );
    if plain {
        text.to_owned()
    } else {
        serde_json::to_string(text).expect("a string always serializes")
    }
}

/// Where a part of the edited text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The file, at this byte offset.
    File(usize),
    /// The override with this 1-based index.
    Override(usize),
}

/// A text being edited, as pieces that each remember their origin.
#[derive(Debug)]
struct Edited {
    text: String,
    /// In text order; their lengths add up to the text's.
    pieces: Vec<(usize, Origin)>,
}

impl Edited {
    fn new(source: &str) -> Edited {
        Edited {
            text: source.to_owned(),
            pieces: vec![(source.len(), Origin::File(0))],
        }
    }

    /// Replaces bytes `range` of the text with `new`, from override `index`.
    fn replace(&mut self, range: Range<usize>, new: &str, index: usize) {
        self.text.replace_range(range.clone(), new);
        let mut pieces = Vec::with_capacity(self.pieces.len() + 2);
        let mut start = 0;
        let mut inserted = false;
        for &(len, origin) in &self.pieces {
            let end = start + len;
            // The part before the range.
            if start < range.start {
                pieces.push((end.min(range.start) - start, origin));
            }
            if !inserted && end >= range.start {
                if !new.is_empty() {
                    pieces.push((new.len(), Origin::Override(index)));
                }
                inserted = true;
            }
            // The part after the range.
            if end > range.end {
                let from = start.max(range.end);
                let origin = match origin {
                    Origin::File(at) => Origin::File(at + (from - start)),
                    other => other,
                };
                pieces.push((end - from, origin));
            }
            start = end;
        }
        if !inserted && !new.is_empty() {
            pieces.push((new.len(), Origin::Override(index)));
        }
        pieces.retain(|&(len, _)| len > 0);
        self.pieces = pieces;
    }

    /// Where the byte at `offset` came from (past the end: the end's origin).
    fn origin_at(&self, offset: usize) -> Origin {
        let mut start = 0;
        let mut last = Origin::File(0);
        for &(len, origin) in &self.pieces {
            if offset < start + len {
                return match origin {
                    Origin::File(at) => Origin::File(at + (offset - start)),
                    other => other,
                };
            }
            last = match origin {
                Origin::File(at) => Origin::File(at + len),
                other => other,
            };
            start += len;
        }
        last
    }
}

/// A text's lines, to turn positions into byte offsets and back, and its
/// nodes' extents.
struct Layout<'t> {
    text: &'t str,
    /// The byte offset of each line's start.
    line_starts: Vec<usize>,
}

impl<'t> Layout<'t> {
    fn new(text: &'t str) -> Layout<'t> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        Layout { text, line_starts }
    }

    /// The byte offset of `pos` (clamped to the text).
    fn offset_of(&self, pos: Pos) -> usize {
        let line = (pos.line.max(1) as usize - 1).min(self.line_starts.len() - 1);
        let start = self.line_starts[line];
        let line_text = self.text[start..].split('\n').next().unwrap_or_default();
        let column = pos.column.max(1) as usize - 1;
        start
            + line_text
                .char_indices()
                .nth(column)
                .map_or(line_text.len(), |(at, _)| at)
    }

    /// The position of byte `offset`.
    fn pos_of(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count());
        Pos {
            line: u32::try_from(line + 1).unwrap_or(u32::MAX),
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }
    }

    /// The offset of line `line`'s first non-blank character (its start
    /// when blank).
    fn first_word_of_line(&self, line: u32) -> usize {
        let start = self.offset_of(Pos { line, column: 1 });
        let rest = &self.text[start..];
        let line_text = rest.split('\n').next().unwrap_or_default();
        start + (line_text.len() - line_text.trim_start().len())
    }

    /// Whether `node` is written where it is used (not an alias, not an
    /// entry a merge key brought in).
    fn own(&self, node: &Node) -> bool {
        node.span
            .is_some_and(|(start, _)| self.offset_of(node.pos) == start)
    }

    /// Whether `node` is a flow collection (`[...]`, `{...}`).
    fn is_flow(&self, node: &Node) -> bool {
        matches!(node.kind, Kind::Seq(_) | Kind::Map(_))
            && node.span.is_some_and(|(start, end)| {
                end == start + 1 && matches!(self.text.as_bytes().get(start), Some(b'[' | b'{'))
            })
    }

    /// The byte offset just past `node`'s text.
    fn end(&self, node: &Node) -> Option<usize> {
        if !self.own(node) {
            return self.alias_end(node);
        }
        let (start, end) = node.span?;
        if self.is_flow(node) {
            return self.flow_end(start);
        }
        match &node.kind {
            Kind::Seq(items) => items.iter().filter_map(|item| self.end(item)).max(),
            Kind::Map(entries) => entries
                .iter()
                .flat_map(|(k, v)| [self.end(k), self.end(v)])
                .flatten()
                .max(),
            _ => Some(end),
        }
    }

    /// The end of the `*alias` written at `node`'s position.
    fn alias_end(&self, node: &Node) -> Option<usize> {
        let start = self.offset_of(node.pos);
        let rest = self.text[start..].strip_prefix('*')?;
        let name = rest
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '{' | '}'))
            .unwrap_or(rest.len());
        Some(start + 1 + name)
    }

    /// The end of the flow collection opening at byte `start`: past its
    /// closing bracket.
    fn flow_end(&self, start: usize) -> Option<usize> {
        self.scan_flow(start).map(|(end, _)| end)
    }

    /// [`Layout::flow_end`], and the last byte before the closing bracket
    /// that is neither blank nor in a comment (`{`, `,`, or an entry's
    /// last).
    fn scan_flow(&self, start: usize) -> Option<(usize, u8)> {
        let bytes = self.text.as_bytes();
        let mut depth = 0usize;
        let mut at = start;
        let mut last = b' ';
        // Whether a scalar may start here (a quote then opens a quoted one).
        let mut scalar_start = true;
        while at < bytes.len() {
            let byte = bytes[at];
            match byte {
                b'[' | b'{' => {
                    depth += 1;
                    scalar_start = true;
                }
                b']' | b'}' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some((at + 1, last));
                    }
                    scalar_start = false;
                }
                b',' | b':' => scalar_start = true,
                b'"' if scalar_start => {
                    at += 1;
                    while at < bytes.len() && bytes[at] != b'"' {
                        at += if bytes[at] == b'\\' { 2 } else { 1 };
                    }
                    scalar_start = false;
                }
                b'\'' if scalar_start => {
                    at += 1;
                    while at < bytes.len() {
                        if bytes[at] == b'\'' {
                            if bytes.get(at + 1) == Some(&b'\'') {
                                at += 1;
                            } else {
                                break;
                            }
                        }
                        at += 1;
                    }
                    scalar_start = false;
                }
                b'#' if at == 0 || bytes[at - 1].is_ascii_whitespace() => {
                    while at < bytes.len() && bytes[at] != b'\n' {
                        at += 1;
                    }
                    continue;
                }
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => scalar_start = false,
            }
            if !byte.is_ascii_whitespace() {
                last = bytes[at.min(bytes.len() - 1)];
            }
            at += 1;
        }
        None
    }

    /// Where `key`'s `:` is.
    fn colon_after(&self, key: &Node) -> Option<usize> {
        let end = self.end(key)?;
        let skipped = self.text[end..].len() - self.text[end..].trim_start().len();
        (self.text.as_bytes().get(end + skipped) == Some(&b':')).then_some(end + skipped)
    }

    /// The edit that gives `key` (whose value is `value`) the value
    /// `text`: the bytes from its `:` to the end of the value, and what
    /// replaces them (as many line breaks kept as were there, so later
    /// lines keep their numbers).
    fn new_value(
        &self,
        key: &Node,
        value: &Node,
        text: &str,
    ) -> Result<(Range<usize>, String), String> {
        let unplaced = || "cannot find this key's value in the spec's text".to_owned();
        let colon = self.colon_after(key).ok_or_else(unplaced)?;
        let end = self.end(value).ok_or_else(unplaced)?.max(colon + 1);
        let breaks = self.text[colon + 1..end].matches('\n').count();
        Ok((colon + 1..end, format!(" {text}{}", "\n".repeat(breaks))))
    }

    /// The edit that adds `key: text` to mapping `map`: where to insert
    /// what (a line after the last entry of a block mapping, an entry
    /// before the `}` of a flow one).
    fn new_entry(&self, map: &Node, key: &str, text: &str) -> Result<(usize, String), String> {
        let unplaced = || "cannot find where to add this key in the spec's text".to_owned();
        if self.is_flow(map) {
            let (start, _) = map.span.ok_or_else(unplaced)?;
            let (end, last) = self.scan_flow(start).ok_or_else(unplaced)?;
            let separator = if matches!(last, b'{' | b',') {
                " "
            } else {
                ", "
            };
            return Ok((end - 1, format!("{separator}{key}: {text}")));
        }
        let end = self.end(map).ok_or_else(unplaced)?;
        let indent = " ".repeat(map.pos.column.max(1) as usize - 1);
        let entry = format!("{indent}{key}: {text}\n");
        if self.text[..end].ends_with('\n') {
            return Ok((end, entry));
        }
        Ok(match self.text[end..].find('\n') {
            Some(newline) => (end + newline + 1, entry),
            None => (self.text.len(), format!("\n{entry}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{JobSpec, PathOrUrl, TargetModule, TargetModules};
    use super::*;

    const SPEC: &str = "\
# A comment that stays.
name: t
model:
  preset: tiny
dataset:
  train: train.jsonl   # the examples
lora:
  r: 8
  target_modules:
    - q_proj
    - v_proj
training: {max_steps: 10}
";

    fn read(text: &str, overrides: &[&str]) -> Result<super::super::LoadedSpec, SpecError> {
        JobSpec::from_yaml_with_overrides(text, "job.yaml", "/specs", overrides, Path::new("/cwd"))
    }

    fn edited(text: &str, overrides: &[&str]) -> String {
        match read(text, overrides) {
            Ok(loaded) => loaded.text,
            Err(error) => panic!("{error}"),
        }
    }

    fn problems(text: &str, overrides: &[&str]) -> Vec<String> {
        match read(text, overrides) {
            Ok(loaded) => panic!("expected problems, read {}", loaded.text),
            Err(error) => error.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_value_is_replaced_in_place_and_the_rest_of_the_file_stays() {
        let text = edited(SPEC, &["lora.r=4"]);
        assert_eq!(text, SPEC.replace("  r: 8\n", "  r: 4\n"));
        let spec = read(SPEC, &["lora.r=4"]).unwrap().spec;
        assert_eq!(spec.lora.r, 4);
        // Comments after a value stay.
        let text = edited(SPEC, &["dataset.train=s3://b/d.jsonl"]);
        assert!(
            text.contains("  train: s3://b/d.jsonl   # the examples\n"),
            "{text}"
        );
    }

    #[test]
    fn missing_keys_go_at_the_end_of_their_section_and_missing_sections_at_the_end() {
        let text = edited(
            SPEC,
            &["lora.alpha=32", "training.seed=7", "output.dir=/out"],
        );
        assert!(
            text.contains("    - v_proj\n  alpha: 32\ntraining:"),
            "{text}"
        );
        assert!(
            text.contains("training: {max_steps: 10, seed: 7}\n"),
            "{text}"
        );
        assert!(text.ends_with("output: {dir: /out}\n"), "{text}");
        let spec = read(
            SPEC,
            &["lora.alpha=32", "training.seed=7", "output.dir=/out"],
        )
        .unwrap()
        .spec;
        assert_eq!(spec.lora.alpha, 32.0);
        assert_eq!(spec.training.seed, 7);
        assert_eq!(
            spec.output.dir,
            Some(PathOrUrl::Path(PathBuf::from("/out")))
        );
    }

    #[test]
    fn lists_replace_block_lists_and_lines_keep_their_numbers() {
        let loaded = read(SPEC, &["lora.target_modules=[k_proj, o_proj]"]).unwrap();
        assert_eq!(
            loaded.spec.lora.target_modules,
            TargetModules::List(vec![TargetModule::KProj, TargetModule::OProj])
        );
        assert_eq!(
            loaded.text.lines().count(),
            SPEC.lines().count(),
            "{}",
            loaded.text
        );
        assert!(
            loaded
                .text
                .contains("  target_modules: [k_proj, o_proj]\n\n\ntraining:")
        );
        // A later problem in the file is still at its line.
        let bad = SPEC.replace("{max_steps: 10}", "{max_steps: 0}");
        assert_eq!(
            problems(&bad, &["lora.target_modules=[k_proj]"]),
            ["job.yaml:12:23: training.max_steps: must be at least 1, got 0"]
        );
    }

    #[test]
    fn file_problems_keep_their_lines_after_an_inserted_key() {
        let bad = SPEC.replace("{max_steps: 10}", "{max_steps: 0}");
        assert_eq!(
            problems(&bad, &["lora.alpha=32"]),
            ["job.yaml:12:23: training.max_steps: must be at least 1, got 0"]
        );
    }

    #[test]
    fn a_bad_value_names_the_override() {
        assert_eq!(
            problems(SPEC, &["training.max_steps=3", "lora.r=abc"]),
            [
                "override 2 (lora.r=abc): lora.r: expected an integer between 1 and 1024, got \"abc\""
            ]
        );
        assert_eq!(
            problems(SPEC, &["lora.r=0"]),
            ["override 1 (lora.r=0): lora.r: must be between 1 and 1024, got 0"]
        );
    }

    #[test]
    fn an_unknown_key_gets_the_did_you_mean_and_names_the_override() {
        let found = problems(SPEC, &["lora.rr=4"]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("override 1 (lora.rr=4): lora.rr: unknown key; did you mean r?"),
            "{found:?}"
        );
        let found = problems(SPEC, &["trainig.max_steps=3"]);
        assert!(
            found[0].starts_with(
                "override 1 (trainig.max_steps=3): trainig: unknown key; did you mean training?"
            ),
            "{found:?}"
        );
        let found = problems(SPEC, &["training.lr=0.1"]);
        assert!(
            found[0].contains("did you mean learning_rate?"),
            "{found:?}"
        );
    }

    #[test]
    fn file_and_override_problems_are_reported_together_file_first() {
        let bad = SPEC.replace("r: 8", "r: 0");
        assert_eq!(
            problems(&bad, &["training.max_steps=-1"]),
            [
                "job.yaml:8:6: lora.r: must be between 1 and 1024, got 0",
                "override 1 (training.max_steps=-1): training.max_steps: must be at least 1, got -1",
            ]
        );
    }

    #[test]
    fn keys_match_their_aliases_both_ways() {
        let aliased = SPEC.replace("  r: 8", "  lora_r: 8");
        let loaded = read(&aliased, &["lora.r=4"]).unwrap();
        assert_eq!(loaded.spec.lora.r, 4);
        assert!(loaded.text.contains("  lora_r: 4\n"), "{}", loaded.text);
        let loaded = read(SPEC, &["lora.lora_rank=2"]).unwrap();
        assert_eq!(loaded.spec.lora.r, 2);
        assert!(loaded.text.contains("  r: 2\n"), "{}", loaded.text);
    }

    #[test]
    fn clearing_a_key_lets_its_alternative_be_given() {
        let loaded = read(SPEC, &["model.preset=", "model.path=models/m"]).unwrap();
        assert_eq!(
            loaded.spec.model,
            super::super::ModelSpec::Path(PathOrUrl::Path(PathBuf::from("/cwd/models/m")))
        );
        // Both given: the spec's conflict, at the override, naming the file's line.
        assert_eq!(
            problems(SPEC, &["model.path=/m"]),
            [
                "override 1 (model.path=/m): model.path: conflicts with model.preset at line 4; give only one of path or preset"
            ]
        );
    }

    #[test]
    fn relative_paths_are_from_the_current_directory_and_urls_stay() {
        let loaded = read(
            SPEC,
            &[
                "dataset.train=data/x.jsonl",
                "dataset.validation=s3://b/v.jsonl",
                "checkpoint.storage=/abs",
            ],
        )
        .unwrap();
        let dataset = &loaded.spec.dataset;
        assert_eq!(
            dataset.train,
            PathOrUrl::Path(PathBuf::from("/cwd/data/x.jsonl"))
        );
        assert_eq!(
            dataset.validation,
            Some(super::super::Validation::Data(PathOrUrl::Url(
                "s3://b/v.jsonl".into()
            )))
        );
        assert_eq!(
            loaded.spec.checkpoint.storage,
            PathOrUrl::Path(PathBuf::from("/abs"))
        );
    }

    #[test]
    fn values_are_read_as_yaml_and_written_back_the_same() {
        let loaded = read(
            SPEC,
            &[
                "name=a, b: c # d",
                "training.learning_rate=3e-4",
                "lora.use_rslora=true",
            ],
        );
        // `a, b: c` is a mapping in YAML: not a name.
        let found = match loaded {
            Ok(_) => panic!("a mapping is no name"),
            Err(error) => error.problems().to_vec(),
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "override 1 (name=a, b: c # d)");
        let loaded = read(
            SPEC,
            &[
                "name=\"a, b: c # d\"",
                "training.learning_rate=3e-4",
                "lora.use_rslora=true",
                "training.schedule=linear",
            ],
        )
        .unwrap();
        assert_eq!(loaded.spec.name, "a, b: c # d");
        assert_eq!(loaded.spec.training.learning_rate, 3e-4);
        assert!(loaded.spec.lora.use_rslora);
        let loaded = read(SPEC, &["name=1.10"]).unwrap();
        assert_eq!(loaded.spec.name, "1.10");
        let loaded = read(SPEC, &["name=\"true\""]).unwrap();
        assert_eq!(loaded.spec.name, "true");
        assert!(loaded.text.contains("name: \"true\"\n"), "{}", loaded.text);
    }

    #[test]
    fn malformed_overrides_and_values_are_problems_naming_them() {
        assert_eq!(
            problems(SPEC, &["lora.r"]),
            ["override 1 (lora.r): expected key.path=value, e.g. training.max_steps=20"]
        );
        let found = problems(SPEC, &["lora..r=4"]);
        assert!(found[0].starts_with("override 1 (lora..r=4): expected key.path=value"));
        let found = problems(SPEC, &["lora.target_modules=[q_proj"]);
        assert!(
            found[0].starts_with(
                "override 1 (lora.target_modules=[q_proj): lora.target_modules: the value is not YAML"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn a_scalar_or_empty_section_becomes_a_mapping() {
        let text = "name: t\nmodel:\n  preset: tiny\ndataset:\n  train: d\ntraining:\n  max_steps: 1\nlora:\n";
        let loaded = read(text, &["lora.r=2"]).unwrap();
        assert_eq!(loaded.spec.lora.r, 2);
        assert!(loaded.text.ends_with("lora: {r: 2}\n"), "{}", loaded.text);
        let found = problems(SPEC, &["name.first=x"]);
        assert!(
            found[0]
                .starts_with("override 1 (name.first=x): name: expected free text, got a mapping"),
            "{found:?}"
        );
    }

    #[test]
    fn an_empty_spec_is_started_by_the_overrides() {
        let loaded = read(
            "# nothing yet\n",
            &[
                "name=t",
                "model.preset=tiny",
                "dataset.train=/d.jsonl",
                "training.max_steps=2",
            ],
        )
        .unwrap();
        assert_eq!(
            loaded.spec.training.length,
            super::super::TrainingLength::MaxSteps(2)
        );
        assert_eq!(
            loaded.text,
            "# nothing yet\nname: t\nmodel: {preset: tiny}\ndataset: {train: /d.jsonl}\ntraining: {max_steps: 2}\n"
        );
    }

    #[test]
    fn aliased_parts_of_the_file_are_not_edited() {
        let head =
            "name: t\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining: {max_steps: 1}\n";
        // An anchored section of the spec itself is edited where it is written.
        let anchored = format!("{head}lora: &l {{r: 8}}\n");
        assert_eq!(read(&anchored, &["lora.r=4"]).unwrap().spec.lora.r, 4);
        // A key that a merge key brings in is not.
        let merged = format!("defaults: &d\n  r: 8\n{head}lora:\n  <<: *d\n  alpha: 4\n");
        let found = match read(&merged, &["lora.r=4"]) {
            Ok(loaded) => panic!("edited a merged key: {}", loaded.text),
            Err(error) => error.problems().to_vec(),
        };
        assert_eq!(found[0].file, "override 1 (lora.r=4)");
        assert!(found[0].message.contains("merge key"), "{found:?}");
    }

    #[test]
    fn a_syntax_error_in_the_file_is_located_in_the_file() {
        let found = problems("name: [t\n", &["lora.r=4"]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("job.yaml:"), "{found:?}");
    }

    #[test]
    fn given_twice_points_at_the_file_line() {
        // A file that gives r twice: the override edits the first, the
        // reader reports the second with the first's line.
        let twice = SPEC.replace("  r: 8\n", "  r: 8\n  r: 9\n");
        assert_eq!(
            problems(&twice, &["lora.alpha=2"]),
            ["job.yaml:9:3: lora.r: given twice (first at line 8)"]
        );
    }

    #[test]
    fn unusual_layouts_are_edited_in_place() {
        let text = "\
\"name\": |
  a name
  on two lines
model: {preset: tiny,}
dataset:
  train: d
  format: auto
training: {
  max_steps: 1,  # one
}
lora:
  target_modules: [q_proj,
    v_proj]
  r: 8
";
        let loaded = read(
            text,
            &[
                "name=short",
                "model.preset=small",
                "model.preset=tiny",
                "training.seed=3",
                "lora.target_modules=all-linear",
                "dataset.max_seq_len=64",
            ],
        )
        .unwrap();
        assert_eq!(loaded.spec.name, "short");
        assert_eq!(loaded.spec.training.seed, 3);
        assert_eq!(loaded.spec.lora.target_modules, TargetModules::AllLinear);
        assert_eq!(loaded.spec.lora.r, 8);
        assert_eq!(loaded.spec.dataset.max_seq_len, 64);
        assert_eq!(
            loaded.text.lines().count(),
            text.lines().count() + 1,
            "{}",
            loaded.text
        );
        assert!(
            loaded
                .text
                .starts_with("\"name\": short\n\n\nmodel: {preset: tiny,}\n")
        );
        assert!(
            loaded
                .text
                .contains("  format: auto\n  max_seq_len: 64\ntraining")
        );
        // A problem after all that is still at its line in the file.
        let bad = text.replace("r: 8", "r: x");
        let found = problems(&bad, &["name=short", "lora.target_modules=all-linear"]);
        assert_eq!(
            found,
            ["job.yaml:14:6: lora.r: expected an integer between 1 and 1024, got \"x\""]
        );
    }

    #[test]
    fn rendered_values_read_back_as_given() {
        for given in [
            "8",
            "-3",
            "0x10",
            "1.5e-3",
            ".inf",
            "true",
            "false",
            "null",
            "~",
            "cosine",
            "\"8\"",
            "'single'",
            "\"quote \\\" inside\"",
            "s3://b/k",
            "a:b",
            "a: b",
            "[a, [b, c]]",
            "{k: v, n: 1}",
            "x # comment",
            "\"#x\"",
            "é",
            "- a",
            "\"\"",
            "''",
        ] {
            let original = yaml::parse(given).unwrap();
            let rendered = match &original {
                None => "~".to_owned(),
                Some(node) => render(node, given),
            };
            assert!(!rendered.contains('\n'), "{given:?} → {rendered:?}");
            let in_block = format!("k: {rendered}\n");
            let in_flow = format!("{{k: {rendered}}}\n");
            for text in [in_block, in_flow] {
                let read = yaml::parse(&text).unwrap().unwrap();
                let Kind::Map(entries) = read.kind else {
                    panic!("{text:?}")
                };
                let value = &entries[0].1;
                let expected = original.clone().unwrap_or(Node {
                    pos: Pos::START,
                    span: None,
                    kind: Kind::Null,
                });
                assert!(
                    same_value(value, &expected),
                    "{given:?} → {text:?} reads {value:?}"
                );
            }
        }
    }

    /// Whether two nodes hold the same value, wherever they are.
    fn same_value(a: &Node, b: &Node) -> bool {
        match (&a.kind, &b.kind) {
            (Kind::Seq(x), Kind::Seq(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
            }
            (Kind::Map(x), Kind::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((k1, v1), (k2, v2))| same_value(k1, k2) && same_value(v1, v2))
            }
            (Kind::Float(x), Kind::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
            (x, y) => x == y,
        }
    }

    #[test]
    fn edited_pieces_track_their_origins() {
        let mut edited = Edited::new("abcdef");
        edited.replace(2..4, "XYZ", 1);
        assert_eq!(edited.text, "abXYZef");
        assert_eq!(edited.origin_at(0), Origin::File(0));
        assert_eq!(edited.origin_at(2), Origin::Override(1));
        assert_eq!(edited.origin_at(4), Origin::Override(1));
        assert_eq!(edited.origin_at(5), Origin::File(4));
        assert_eq!(edited.origin_at(7), Origin::File(6));
        edited.replace(7..7, "!", 2);
        assert_eq!(edited.text, "abXYZef!");
        assert_eq!(edited.origin_at(7), Origin::Override(2));
        edited.replace(0..0, ">", 3);
        assert_eq!(edited.origin_at(0), Origin::Override(3));
        assert_eq!(edited.origin_at(1), Origin::File(0));
    }
}
