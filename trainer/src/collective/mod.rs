//! Collective operations across the ranks of a data-parallel job.
//!
//! [`Collective`] is what the training loop sees: `all_reduce_sum` (and
//! `_mean`), `broadcast` and `barrier` over `f32` buffers. [`Solo`] is the
//! one-rank case. [`TcpRing`] connects N ranks in a ring
//! (rank r sends to r+1 and receives from r−1) and runs the
//! bandwidth-optimal ring algorithms over it, as NCCL and gloo do.
//!
//! Rendezvous and liveness always go over TCP. A link between two ranks on
//! the same host carries its data through shared memory instead
//! ([`Transport::Auto`]), as NCCL picks SHM inside a node and sockets
//! between nodes; when all ranks share one host, operations skip the ring
//! and meet in one shared mapping (`group`).
//!
//! Every operation is bounded: a peer that dies or stalls becomes an error
//! on every rank within [`RingConfig::timeout`], and ranks that disagree on
//! the operation or the buffer size fail with both shapes named. After an
//! error the ring is broken and every later call fails at once; a new
//! attempt opens a new ring.
//!
//! Between GPUs, [`nccl::NcclCollective`] moves the data with NCCL and
//! keeps the ring for set-up and for checking every call.
//!
//! Not here: which ranks exist and where (the coordinator hands out peers
//! and the attempt secret), and what the buffers mean (`train`).

mod frame;
#[cfg(target_os = "linux")]
mod group;
mod handshake;
mod link;
#[cfg(target_os = "linux")]
mod mapping;
pub mod nccl;
mod rendezvous;
mod ring;
mod schedule;
#[cfg(target_os = "linux")]
mod shm;
mod tcp;

use std::fmt;
use std::time::Duration;

pub use ring::TcpRing;

/// The environment variable the attempt secret comes from (never a flag:
/// command lines are visible to every user of a host).
pub const SECRET_ENV: &str = "LORAFLEET_RING_SECRET";

/// Collective operations over the ranks of one job attempt.
///
/// Every rank must call the same operations in the same order with buffers
/// of the same length; a rank that does not makes the call fail on every
/// rank with an error naming both calls.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank with the element-wise sum over ranks.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// Copies `buf` of rank `root` into `buf` of every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError>;

    /// Replaces `buf` on every rank with the element-wise mean over ranks.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce_sum(buf)?;
        let inv = 1.0 / self.world() as f32;
        buf.iter_mut().for_each(|x| *x *= inv);
        Ok(())
    }

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.all_reduce_sum(&mut [0.0])
    }
}

/// The collective of a job with one rank: every operation is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root != 0 {
            return Err(CollectiveError::Config(format!(
                "broadcast from rank {root} in a job of 1 rank"
            )));
        }
        Ok(())
    }
}

/// How a link between two ranks carries its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Shared memory between ranks on the same host, TCP otherwise.
    #[default]
    Auto,
    /// TCP everywhere.
    Tcp,
    /// Shared memory everywhere; an error where a peer is on another host.
    Shm,
}

impl Transport {
    pub fn parse(name: &str) -> Option<Transport> {
        match name {
            "auto" => Some(Transport::Auto),
            "tcp" => Some(Transport::Tcp),
            "shm" => Some(Transport::Shm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Tcp => "tcp",
            Transport::Shm => "shm",
        }
    }
}

/// Where this rank sits in the ring and how the ring behaves.
#[derive(Clone)]
pub struct RingConfig {
    pub rank: usize,
    /// `host:port` of every rank in rank order, this rank's own included
    /// (it listens there).
    pub peers: Vec<String>,
    /// The job attempt's secret: only ranks that know it join the ring.
    pub secret: Vec<u8>,
    /// Bound on connecting the ring and on any wait inside an operation.
    pub timeout: Duration,
    pub transport: Transport,
    /// Bytes per pipelined piece of a transfer.
    pub chunk_bytes: usize,
    /// Whether ranks that all share one host meet in one shared mapping
    /// rather than passing data around the ring's links (on by default).
    pub shared_group: bool,
}

impl RingConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_CHUNK_BYTES: usize = 512 * 1024;

    pub fn new(rank: usize, peers: Vec<String>, secret: Vec<u8>) -> RingConfig {
        RingConfig {
            rank,
            peers,
            secret,
            timeout: Self::DEFAULT_TIMEOUT,
            transport: Transport::Auto,
            chunk_bytes: Self::DEFAULT_CHUNK_BYTES,
            shared_group: true,
        }
    }

    pub fn world(&self) -> usize {
        self.peers.len()
    }
}

impl fmt::Debug for RingConfig {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingConfig")
            .field("rank", &self.rank)
            .field("peers", &self.peers)
            .field("secret", &"<hidden>")
            .field("timeout", &self.timeout)
            .field("transport", &self.transport)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("shared_group", &self.shared_group)
            .finish()
    }
}

/// Opens the collective for `config`: [`Solo`] for a world of one,
/// [`TcpRing`] otherwise.
pub fn open(config: &RingConfig) -> Result<Box<dyn Collective>, CollectiveError> {
    if config.world() <= 1 {
        if config.rank != 0 {
            return Err(CollectiveError::Config(format!(
                "rank {} in a job of 1 rank",
                config.rank
            )));
        }
        return Ok(Box::new(Solo));
    }
    Ok(Box::new(TcpRing::connect(config)?))
}

/// One call of a collective, as it is named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpCall {
    pub op: OpKind,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    AllReduceSum,
    Broadcast { root: u32 },
}

impl fmt::Display for OpCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            OpKind::AllReduceSum => write!(f, "all_reduce_sum of {} f32 values", self.count),
            OpKind::Broadcast { root } => {
                write!(f, "broadcast from rank {root} of {} f32 values", self.count)
            }
        }
    }
}

/// Why a collective operation or the ring's set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("bad ring configuration: {0}")]
    Config(String),
    #[error("rank {rank}: cannot listen on {addr}: {source}")]
    Listen {
        rank: usize,
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "rank {rank}: no connection to rank {peer} at {addr} within {secs:.0} s (last error: {last})"
    )]
    Connect {
        rank: usize,
        peer: usize,
        addr: String,
        secs: f64,
        last: String,
    },
    #[error("rank {rank}: rank {peer} never connected within {secs:.0} s{}", refused.as_ref().map(|r| format!(" (refused a caller: {r})")).unwrap_or_default())]
    NoPeer {
        rank: usize,
        peer: usize,
        secs: f64,
        /// Why the last caller that was not rank `peer` was refused.
        refused: Option<String>,
    },
    #[error("rank {rank}: refused by rank {peer} at {addr}: {reason}")]
    Refused {
        rank: usize,
        peer: usize,
        addr: String,
        reason: String,
    },
    #[error(
        "collective mismatch at operation #{seq}: rank {rank} called {ours}, but rank {peer} called {theirs}"
    )]
    Mismatch {
        seq: u64,
        rank: usize,
        ours: String,
        peer: usize,
        theirs: String,
    },
    #[error(
        "rank {rank}: rank {peer} did not answer for {secs:.1} s during {call} (operation #{seq}): it is dead, stalled or unreachable"
    )]
    Timeout {
        rank: usize,
        peer: usize,
        call: String,
        seq: u64,
        secs: f64,
    },
    #[error("rank {rank}: lost rank {peer} during {call} (operation #{seq}): {detail}")]
    PeerLost {
        rank: usize,
        peer: usize,
        call: String,
        seq: u64,
        detail: String,
    },
    #[error(
        "rank {rank}: rank {peer} sent a malformed message during {call} (operation #{seq}): {detail}"
    )]
    Protocol {
        rank: usize,
        peer: usize,
        call: String,
        seq: u64,
        detail: String,
    },
    #[error("rank {rank}: NCCL: {detail}")]
    Nccl { rank: usize, detail: String },
    #[error("rank {rank}: the ring was aborted by another rank: {message}")]
    Aborted { rank: usize, message: String },
    #[error(
        "rank {rank}: the ring is broken by an earlier error ({cause}); a new attempt must open a new one"
    )]
    Broken { rank: usize, cause: String },
}
