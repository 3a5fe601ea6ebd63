//! Reading: a JSONL source → checked, tokenized samples ([`read_samples`]),
//! or checked records only, without a tokenizer ([`check_records`]).
//!
//! Owns: the loading loop (lines are parsed and tokenized in parallel,
//! chunk by chunk, while the raw file streams in; only tokenized samples are
//! kept), the bound on the memory it leaves allocated but free
//! (`FreedMemory`), collecting up to [`MAX_PROBLEMS`] bad lines before
//! failing, and the empty-dataset check. Not here: what a line may hold
//! ([`super::jsonl`]), masks and truncation ([`super::format`]), the
//! dataset built from the samples ([`super::dataset`]).

use rayon::prelude::*;

use super::format::{Encoded, can_encode, encode_sample, fit_to_budget, text_bytes};
use super::jsonl::{RawSample, ShapeTracker, parse_record};
use super::source::DataSource;
use super::{DataError, DataOptions, LineProblem, MAX_PROBLEMS, Shape};
use crate::tokenizer::TextTokenizer;

/// Lines parsed together (in parallel) per chunk.
const LINES_PER_CHUNK: usize = 1024;
/// Most bytes of lines parsed at once: with long records, a chunk ends
/// before `LINES_PER_CHUNK`, so the lines in flight stay within this (plus
/// one record of at most [`MAX_RECORD_BYTES`](super::source::MAX_RECORD_BYTES)).
const BYTES_PER_CHUNK: usize = 4 << 20;
/// Most bytes of text tokenized at once (in parallel), counted by
/// [`text_bytes`] after each sample is cut by [`fit_to_budget`]; one sample
/// longer than this is tokenized on its own. Tokenizing costs up to ~250×
/// the text in memory (a byte-level tokenizer: one token, with its offsets,
/// word index and string, per byte), so this, not the number of threads,
/// bounds that cost.
pub const TOKENIZED_BYTES_AT_ONCE: usize = 256 << 10;
/// The memory that tokenizing may leave allocated but free, for each byte
/// of the most text tokenized at once (see [`FreedMemory`]).
const FREED_BYTES_PER_TEXT_BYTE: usize = 256;
/// What a kept sample costs beyond 5 bytes a token: three `Vec`s and their
/// allocations.
const SAMPLE_OVERHEAD_BYTES: usize = 128;

/// Samples read from one file, before any split or packing.
#[derive(Debug)]
pub struct ReadSamples {
    pub samples: Vec<Encoded>,
    pub dropped_without_targets: usize,
    pub shape: Shape,
}

/// What one line turned into: parsed and cut (`RawSample`), then tokenized
/// (`Encoded`).
enum LineOutcome<T> {
    Blank,
    Bad(String),
    /// A record of `shape`, or why it cannot be used (empty when the
    /// tokenizer cannot encode the shape at all).
    Parsed(Shape, Result<T, String>),
}

/// Parses one line and cuts it to what `max_seq_len` tokens can use.
fn prepare_line(
    number: usize,
    bytes: &[u8],
    tokenizer: &TextTokenizer,
    options: &DataOptions,
) -> LineOutcome<RawSample> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return LineOutcome::Bad(format!(
                "not UTF-8 text (bad byte at column {})",
                e.valid_up_to() + 1
            ));
        }
    };
    let text = if number == 1 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    if text.trim().is_empty() {
        return LineOutcome::Blank;
    }
    match parse_record(text, options.format) {
        Err(message) => LineOutcome::Bad(message),
        Ok((shape, mut raw)) => {
            if !can_encode(shape, tokenizer) {
                return LineOutcome::Parsed(shape, Err(String::new()));
            }
            let fitted = fit_to_budget(&mut raw, tokenizer, options.max_seq_len).map(|()| raw);
            LineOutcome::Parsed(shape, fitted)
        }
    }
}

/// Tokenizes the prepared lines of a chunk, in order, in parallel groups
/// of at most [`TOKENIZED_BYTES_AT_ONCE`] bytes of text (or one sample),
/// keeping the memory freed in between within bounds ([`FreedMemory`]).
fn tokenize_lines(
    prepared: Vec<LineOutcome<RawSample>>,
    tokenizer: &TextTokenizer,
    options: &DataOptions,
    freed: &mut FreedMemory,
) -> Vec<LineOutcome<Encoded>> {
    let mut outcomes = Vec::with_capacity(prepared.len());
    let tokenize_one = |outcome| match outcome {
        LineOutcome::Blank => LineOutcome::Blank,
        LineOutcome::Bad(message) => LineOutcome::Bad(message),
        LineOutcome::Parsed(shape, raw) => LineOutcome::Parsed(
            shape,
            raw.and_then(|raw| encode_sample(raw, tokenizer, options)),
        ),
    };
    let mut tokenize = |group: Vec<LineOutcome<RawSample>>, group_bytes: usize| {
        // A sample alone (a long one) is tokenized on this thread, so that
        // long samples, one after another, reuse the same memory; a group
        // is spread over threads, which may each keep what they freed.
        let alone = group.len() == 1;
        let done: Vec<LineOutcome<Encoded>> = if alone {
            group.into_iter().map(tokenize_one).collect()
        } else {
            group.into_par_iter().map(tokenize_one).collect()
        };
        for outcome in &done {
            if let LineOutcome::Parsed(_, Ok(e)) = outcome {
                freed.kept += e.sample.len() * 5 + SAMPLE_OVERHEAD_BYTES;
            }
        }
        if alone {
            freed.most_at_once = freed.most_at_once.max(group_bytes);
        } else {
            freed.after_parallel_work(group_bytes);
        }
        outcomes.extend(done);
    };
    let mut group = Vec::new();
    let mut group_bytes = 0;
    for outcome in prepared {
        let bytes = match &outcome {
            LineOutcome::Parsed(_, Ok(raw)) => text_bytes(raw),
            _ => 0,
        };
        if !group.is_empty() && group_bytes + bytes > TOKENIZED_BYTES_AT_ONCE {
            tokenize(std::mem::take(&mut group), group_bytes);
            group_bytes = 0;
        }
        group_bytes += bytes;
        group.push(outcome);
    }
    tokenize(group, group_bytes);
    outcomes
}

/// Keeps the memory that loading leaves allocated but free within a bound.
///
/// glibc's allocator keeps what a thread frees for that thread's next
/// allocations, so once several threads have each tokenized long texts (or
/// parsed long lines), the process would go on holding one such peak per
/// thread. After each chunk is parsed and each group tokenized in
/// parallel, when the process holds more than it did
/// when loading began, plus the samples kept, plus the chunk of lines in
/// hand, plus [`FREED_BYTES_PER_TEXT_BYTE`] × the most text tokenized at
/// once (at least [`TOKENIZED_BYTES_AT_ONCE`]), that freed memory is handed
/// back to the system (`malloc_trim`). Checking costs one read of
/// `/proc/self/statm`; handing back (which costs page faults later)
/// happens only when threads did accumulate. Elsewhere than Linux with
/// glibc, nothing is checked or handed back.
struct FreedMemory {
    /// Resident bytes when loading began.
    start: Option<usize>,
    /// Bytes of the samples kept so far (an estimate from above).
    kept: usize,
    /// Bytes of the lines of the chunk in hand.
    chunk: usize,
    /// The most text bytes tokenized in one group so far.
    most_at_once: usize,
}

impl FreedMemory {
    fn begin() -> FreedMemory {
        FreedMemory {
            start: resident_bytes(),
            kept: 0,
            chunk: 0,
            most_at_once: TOKENIZED_BYTES_AT_ONCE,
        }
    }

    /// Called after work spread over threads: parsing a chunk, or
    /// tokenizing `text_bytes` bytes of text at once.
    fn after_parallel_work(&mut self, text_bytes: usize) {
        self.most_at_once = self.most_at_once.max(text_bytes);
        let Some(start) = self.start else {
            return;
        };
        let allowed =
            start + self.kept + 4 * self.chunk + FREED_BYTES_PER_TEXT_BYTE * self.most_at_once;
        if resident_bytes().is_some_and(|now| now > allowed) {
            release_freed_memory();
        }
    }
}

/// The process's resident memory in bytes (Linux with glibc only).
fn resident_bytes() -> Option<usize> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page_size).ok().map(|size| pages * size)
}

/// Hands the memory the allocator holds free back to the system.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's own
    // heaps to the system; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads, checks and tokenizes every line of `source`. Fails with up to
/// [`MAX_PROBLEMS`] bad lines, or when nothing usable is left.
pub fn read_samples(
    source: &DataSource,
    tokenizer: &TextTokenizer,
    options: &DataOptions,
) -> Result<ReadSamples, DataError> {
    options.check()?;
    let file = source.name().to_string();
    let mut lines = source.lines();
    let mut tracker = ShapeTracker::default();
    let mut samples = Vec::new();
    let mut problems: Vec<LineProblem> = Vec::new();
    let mut dropped_without_targets = 0;
    let mut saw_line = false;
    let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
    let mut freed = FreedMemory::begin();
    'reading: loop {
        chunk.clear();
        let mut bytes = 0;
        while chunk.len() < LINES_PER_CHUNK
            && bytes < BYTES_PER_CHUNK
            && problems.len() < MAX_PROBLEMS
        {
            let Some(line) = lines.next() else {
                break;
            };
            match line {
                Ok(line) => {
                    bytes += line.1.len();
                    chunk.push(line);
                }
                Err(e) => problems.extend(refused_lines(e)?),
            }
        }
        if chunk.is_empty() {
            break;
        }
        let prepared: Vec<LineOutcome<RawSample>> = chunk
            .par_iter()
            .map(|(number, bytes)| prepare_line(*number, bytes, tokenizer, options))
            .collect();
        freed.chunk = bytes;
        freed.after_parallel_work(0);
        let numbers: Vec<usize> = chunk.drain(..).map(|(number, _)| number).collect();
        let outcomes = tokenize_lines(prepared, tokenizer, options, &mut freed);
        for (number, outcome) in numbers.iter().zip(outcomes) {
            let message = match outcome {
                LineOutcome::Blank => continue,
                LineOutcome::Bad(message) => message,
                LineOutcome::Parsed(shape, encoded) => {
                    saw_line = true;
                    if !can_encode(shape, tokenizer) {
                        return Err(DataError::NoChatTemplate { file });
                    }
                    match tracker.check(shape, *number).and(encoded) {
                        Err(message) => message,
                        Ok(e) if e.sample.num_targets() == 0 => {
                            dropped_without_targets += 1;
                            continue;
                        }
                        Ok(e) => {
                            if problems.is_empty() {
                                samples.push(e);
                            }
                            continue;
                        }
                    }
                }
            };
            saw_line = true;
            problems.push(LineProblem {
                file: file.clone(),
                line: *number,
                message,
            });
            if problems.len() >= MAX_PROBLEMS {
                break 'reading;
            }
        }
    }
    if !problems.is_empty() {
        return Err(invalid(file, problems));
    }
    let Some(shape) = tracker.shape().filter(|_| !samples.is_empty()) else {
        let why = if saw_line {
            format!(
                "no sample has a target token left at max_seq_len {}",
                options.max_seq_len
            )
        } else {
            "no non-blank lines".to_string()
        };
        return Err(DataError::Empty { file, why });
    };
    Ok(ReadSamples {
        samples,
        dropped_without_targets,
        shape,
    })
}

/// The lines a reader refused (a record over the size limit), to report
/// with the others; any other error ends reading.
fn refused_lines(error: DataError) -> Result<Vec<LineProblem>, DataError> {
    match error {
        DataError::Invalid { problems, .. } => Ok(problems),
        other => Err(other),
    }
}

/// The error for `problems`, in line order, at most [`MAX_PROBLEMS`].
fn invalid(file: String, mut problems: Vec<LineProblem>) -> DataError {
    problems.sort_by_key(|p| p.line);
    let stopped_early = problems.len() >= MAX_PROBLEMS;
    problems.truncate(MAX_PROBLEMS);
    DataError::Invalid {
        file,
        problems,
        stopped_early,
    }
}

/// Checks every line of `source` as a record of `format` without
/// tokenizing it (what a coordinator can do before queuing a job): JSON,
/// keys, one shape per file. Returns the number of records, or up to
/// [`MAX_PROBLEMS`] bad lines with FILE:LINE.
pub fn check_records(source: &DataSource, format: super::Format) -> Result<usize, DataError> {
    let file = source.name().to_string();
    let mut tracker = ShapeTracker::default();
    let mut problems: Vec<LineProblem> = Vec::new();
    let mut records = 0;
    for line in source.lines() {
        let (number, bytes) = match line {
            Ok(line) => line,
            Err(e) => {
                problems.extend(refused_lines(e)?);
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
                continue;
            }
        };
        let message = match std::str::from_utf8(&bytes) {
            Err(e) => format!(
                "not UTF-8 text (bad byte at column {})",
                e.valid_up_to() + 1
            ),
            Ok(text) => {
                let text = text.strip_prefix('\u{feff}').unwrap_or(text);
                if text.trim().is_empty() {
                    continue;
                }
                match parse_record(text, format).and_then(|(shape, _)| tracker.check(shape, number))
                {
                    Ok(()) => {
                        records += 1;
                        continue;
                    }
                    Err(message) => message,
                }
            }
        };
        problems.push(LineProblem {
            file: file.clone(),
            line: number,
            message,
        });
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
    }
    if !problems.is_empty() {
        return Err(invalid(file, problems));
    }
    if records == 0 {
        let why = "no non-blank lines".to_string();
        return Err(DataError::Empty { file, why });
    }
    Ok(records)
}
