//! Where a dataset's bytes come from: any `object_store` store, streamed
//! line by line.
//!
//! Owns: a dataset object ([`DataSource`], opened from a local path or a
//! storage URL by `crate::storage::Location`), and streaming its lines
//! ([`LineReader`]) without holding the whole file. Not here: what the lines
//! mean ([`super::jsonl`]) or how URLs become stores (`crate::storage`).
//!
//! object_store is async and the trainer is synchronous: the reader runs a
//! small current-thread tokio runtime on a thread of its own, which sends
//! chunks over a bounded channel. Being on its own thread, it works the same
//! whether or not the caller is itself inside a tokio runtime, and reading
//! overlaps with tokenizing.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::DataError;
use crate::storage::Location;

/// Chunks in flight between the reading thread and the parser.
const CHANNEL_CHUNKS: usize = 16;

/// The longest line (one JSONL record) a dataset may hold, in bytes. A
/// longer one is refused with `FILE:LINE: record is N MB, over the M MB
/// limit`, read to its end without being kept, so memory stays bounded
/// whatever the file holds.
pub const MAX_RECORD_BYTES: usize = 16_000_000;

/// A dataset object: a store, a path in it, and the name errors use.
#[derive(Clone, Debug)]
pub struct DataSource {
    location: Location,
    /// The longest line its reader accepts ([`MAX_RECORD_BYTES`] unless set).
    max_record_bytes: usize,
}

impl DataSource {
    /// A local path (relative to the working directory) or a URL with a
    /// scheme. Errors name `location` as given.
    pub fn parse(location: &str) -> Result<DataSource, DataError> {
        let location = Location::parse(location).map_err(|e| DataError::Read {
            file: e.location,
            message: e.message,
        })?;
        Ok(DataSource {
            location,
            max_record_bytes: MAX_RECORD_BYTES,
        })
    }

    /// An object in a store the caller already has (a `memory://` store
    /// filled by a test, an S3 store built with credentials, ...).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        path: StorePath,
        name: impl Into<String>,
    ) -> DataSource {
        DataSource {
            location: Location::from_store(store, path, name),
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }

    /// The same source with another limit on one record's bytes (tests use
    /// small ones; the default is [`MAX_RECORD_BYTES`]).
    pub fn with_max_record_bytes(mut self, max_record_bytes: usize) -> DataSource {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// The name errors use: the location as the user wrote it.
    pub fn name(&self) -> &str {
        self.location.name()
    }

    pub fn path(&self) -> &StorePath {
        self.location.path()
    }

    /// Starts streaming the object's lines.
    pub fn lines(&self) -> LineReader {
        let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
        let store = self.location.store().clone();
        let path = self.location.path().clone();
        let thread = std::thread::Builder::new()
            .name("lorafleet-data-read".into())
            .spawn(move || stream_object(store, path, tx))
            .expect("spawning the dataset reader thread");
        LineReader {
            name: self.location.name().to_string(),
            chunks: Some(rx),
            thread: Some(thread),
            pending: Vec::new(),
            start: 0,
            scanned: 0,
            next_line: 1,
            finished: false,
            oversized: None,
            max_line: self.max_record_bytes,
        }
    }
}

type Chunk = Result<Vec<u8>, ReadFailure>;

enum ReadFailure {
    NotFound,
    Other(String),
}

/// Runs on the reader thread: sends the object's chunks until the end, an
/// error, or the receiver hanging up.
fn stream_object(store: Arc<dyn ObjectStore>, path: StorePath, tx: SyncSender<Chunk>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(ReadFailure::Other(format!(
                "starting an I/O runtime: {e}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        let result = match store.get(&path).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(failure(e)));
                return;
            }
        };
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let item = chunk.map(|b| b.to_vec()).map_err(failure);
            let stop = item.is_err();
            if tx.send(item).is_err() || stop {
                return;
            }
        }
    });
}

fn failure(e: object_store::Error) -> ReadFailure {
    match e {
        object_store::Error::NotFound { .. } => ReadFailure::NotFound,
        e => ReadFailure::Other(e.to_string()),
    }
}

/// The lines of an object, in order, numbered from 1, without their
/// line terminator (`\n` or `\r\n`). The last line need not end with `\n`.
pub struct LineReader {
    name: String,
    chunks: Option<Receiver<Chunk>>,
    thread: Option<JoinHandle<()>>,
    /// Received bytes; those before `start` were already handed out.
    pending: Vec<u8>,
    start: usize,
    /// `pending[start..scanned]` holds no `\n`.
    scanned: usize,
    next_line: usize,
    finished: bool,
    /// Bytes of the current line so far, once it passed `max_line`: it is
    /// then counted, not kept.
    oversized: Option<usize>,
    max_line: usize,
}

/// One line's number (1-based) and bytes.
pub type Line = (usize, Vec<u8>);

impl LineReader {
    /// The same reader with another line limit (tests use small ones).
    pub fn with_max_line_bytes(mut self, max_line: usize) -> LineReader {
        self.max_line = max_line;
        self
    }

    /// Ends an oversized line that goes on to `pending[..end]` (`\n` or
    /// the end of the object at `end`): the error for it, naming its size.
    fn refuse_oversized(&mut self, end: usize) -> DataError {
        let size = self.oversized.take().unwrap_or(0) + (end - self.start);
        self.start = (end + 1).min(self.pending.len());
        self.scanned = self.start;
        let number = self.next_line;
        self.next_line += 1;
        DataError::Invalid {
            file: self.name.clone(),
            problems: vec![super::LineProblem {
                file: self.name.clone(),
                line: number,
                message: format!(
                    "record is {} MB, over the {} MB limit",
                    megabytes_over(size, self.max_line),
                    self.max_line as f64 / 1e6
                ),
            }],
            stopped_early: false,
        }
    }

    /// Hands out `pending[start..end]` as the next line.
    fn take_line(&mut self, end: usize) -> Line {
        let mut line = self.pending[self.start..end].to_vec();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.start = (end + 1).min(self.pending.len());
        self.scanned = self.start;
        let number = self.next_line;
        self.next_line += 1;
        (number, line)
    }
}

/// `size` in MB with one decimal, or as many as it takes to show that it is
/// more than `limit` (`16.000001`, not `16.0`).
fn megabytes_over(size: usize, limit: usize) -> String {
    let mb = size as f64 / 1e6;
    let limit_mb = limit as f64 / 1e6;
    (1..=6)
        .map(|decimals| format!("{mb:.decimals$}"))
        .find(|shown| shown.parse::<f64>().is_ok_and(|s| s > limit_mb))
        .unwrap_or_else(|| format!("{mb:.6}"))
}

impl Iterator for LineReader {
    type Item = Result<Line, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(i) = self.pending[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
            {
                let end = self.scanned + i;
                if self.oversized.is_some() || end - self.start > self.max_line {
                    return Some(Err(self.refuse_oversized(end)));
                }
                return Some(Ok(self.take_line(end)));
            }
            self.scanned = self.pending.len();
            if self.finished {
                if self.start == self.pending.len() && self.oversized.is_none() {
                    return None;
                }
                if self.oversized.is_some() || self.pending.len() - self.start > self.max_line {
                    return Some(Err(self.refuse_oversized(self.pending.len())));
                }
                return Some(Ok(self.take_line(self.pending.len())));
            }
            // Drop what was handed out before taking more; a line past the
            // limit is counted and dropped too.
            self.pending.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
            if self.oversized.is_some() || self.pending.len() > self.max_line {
                *self.oversized.get_or_insert(0) += self.pending.len();
                self.pending.clear();
                self.scanned = 0;
            }
            let received = self.chunks.as_ref().and_then(|rx| rx.recv().ok());
            match received {
                Some(Ok(chunk)) => self.pending.extend_from_slice(&chunk),
                None => self.finished = true,
                Some(Err(failure)) => {
                    self.finished = true;
                    self.pending.clear();
                    self.scanned = 0;
                    let message = match failure {
                        ReadFailure::NotFound => "not found".to_string(),
                        ReadFailure::Other(m) => format!("cannot read: {m}"),
                    };
                    return Some(Err(DataError::Read {
                        file: self.name.clone(),
                        message,
                    }));
                }
            }
        }
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        // Hanging up makes the reader thread stop at its next send.
        drop(self.chunks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn lines_of(bytes: &'static [u8]) -> Vec<(usize, String)> {
        let store = Arc::new(InMemory::new());
        let path = StorePath::from("d.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.put(&path, bytes.into())).unwrap();
        DataSource::from_store(store, path, "mem")
            .lines()
            .map(|l| {
                let (n, b) = l.unwrap();
                (n, String::from_utf8(b).unwrap())
            })
            .collect()
    }

    #[test]
    fn splits_lines_with_any_ending() {
        assert_eq!(
            lines_of(b"a\r\nb\n\nc"),
            [
                (1, "a".into()),
                (2, "b".into()),
                (3, String::new()),
                (4, "c".into())
            ]
        );
        assert_eq!(lines_of(b"a\n"), [(1, "a".into())]);
        assert!(lines_of(b"").is_empty());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_being_kept() {
        let store = Arc::new(InMemory::new());
        let path = StorePath::from("d.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut bytes = b"short\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 2_500_000));
        bytes.extend_from_slice(b"\nafter\n");
        bytes.extend(std::iter::repeat_n(b'y', 1_500_000));
        rt.block_on(store.put(&path, bytes.into())).unwrap();
        let lines: Vec<_> = DataSource::from_store(store, path, "mem")
            .lines()
            .with_max_line_bytes(1_000_000)
            .map(|l| l.map(|(n, b)| (n, b.len())).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(
            lines,
            [
                Ok((1, 5)),
                Err("mem:2: record is 2.5 MB, over the 1 MB limit".to_string()),
                Ok((3, 5)),
                Err("mem:4: record is 1.5 MB, over the 1 MB limit".to_string()),
            ]
        );
    }

    #[test]
    fn sizes_just_over_the_limit_show_that_they_are_over() {
        assert_eq!(megabytes_over(100_000_000, 16_000_000), "100.0");
        assert_eq!(megabytes_over(16_040_000, 16_000_000), "16.04");
        assert_eq!(megabytes_over(16_000_001, 16_000_000), "16.000001");
        assert_eq!(megabytes_over(1_500_000, 1_000_000), "1.5");
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let src = DataSource::parse(missing.to_str().unwrap()).unwrap();
        let err = src.lines().next().unwrap().unwrap_err();
        assert_eq!(err.to_string(), format!("{}: not found", missing.display()));
    }
}
