//! [`ShmGroup`]: the ranks of a ring that all share one host, meeting in
//! one shared mapping, so that a collective needs no ring hops at all.
//!
//! An all-reduce walks the buffer in pieces of one slot. For each piece,
//! every rank copies its values into its own slot; after a barrier, rank r
//! sums the r-th slice of the piece across all slots (in rank order, so a
//! run always gives the same bits) and writes the sum back into its slot;
//! after the next barrier every rank copies all the sums out. Three sets of
//! slots rotate, so copying piece t+1 in, summing piece t and copying piece
//! t−1 out all happen between the same two barriers: one barrier per piece.
//! Each value is copied in once and out once (the ring moves it through
//! N−1 links twice), and the slots are small enough to stay in cache.
//! Broadcast is the same pipeline with only the root copying in.
//!
//! Every operation starts by publishing what this rank is calling
//! (sequence number, operation, length), so ranks that disagree fail at the
//! first barrier with both calls named. A barrier spins briefly, then
//! sleeps on a process-shared futex. A waiting rank probes the TCP
//! connections to its ring neighbours: the neighbours of a rank that died
//! notice, the ring closes the group with their reason, and every other
//! rank fails with it. A rank that does not arrive within the timeout is
//! named.
//!
//! Not here: forming the ring and choosing to use a group (`ring`), the
//! per-link byte rings used when ranks span hosts (`shm`).

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use super::mapping::{self, futex_wait, futex_wake, peer_gone};
use super::{CollectiveError, OpCall, OpKind};

const MAGIC: u64 = 0x4c46_4752_4f55_0001;
/// Sets of slots in rotation (see the module doc).
const SETS: usize = 3;
/// Values per cache line: slices start on a line of their own.
const LINE_VALUES: usize = 16;
/// Upper bound on the slots' memory, whatever the world's size: eight
/// ranks' links and group together stay within a container's default
/// 64 MiB `/dev/shm`.
const SLOTS_BUDGET_BYTES: usize = 32 << 20;
const LINES_OFFSET: usize = 4096;
const REASON_OFFSET: usize = 1024;
const REASON_MAX: usize = 2048;
/// How often a waiting rank probes its neighbours.
const PROBE_EVERY: Duration = Duration::from_millis(20);

const OPEN: u32 = 0;
const CLOSING: u32 = 1;
const CLOSED: u32 = 2;

#[repr(C, align(64))]
struct Control {
    magic: AtomicU64,
    world: AtomicU64,
    slot_values: AtomicU64,
    _pad0: [u8; 40],
    /// OPEN, CLOSING (a rank is writing its reason), CLOSED.
    state: AtomicU32,
    /// Bumped when a barrier completes or the group closes; sleepers wait
    /// on it.
    generation: AtomicU32,
    sleepers: AtomicU32,
    reason_len: AtomicU32,
    _pad1: [u8; 48],
}

/// One rank's cache line: how far it got and what it is calling.
#[repr(C, align(64))]
struct RankLine {
    /// Barriers this rank has arrived at, ever.
    arrived: AtomicU64,
    seq: AtomicU64,
    op: AtomicU64,
    count: AtomicU64,
    _pad: [u8; 32],
}

/// The values per slot for a ring's chunk size: at most `chunk_bytes`,
/// within the memory budget, whole cache lines.
pub fn slot_values(chunk_bytes: usize, world: usize) -> usize {
    let bytes = chunk_bytes.min(SLOTS_BUDGET_BYTES / (SETS * world));
    (bytes / 4 / LINE_VALUES).max(1) * LINE_VALUES
}

fn data_offset(world: usize) -> usize {
    (LINES_OFFSET + world * size_of::<RankLine>()).next_multiple_of(4096)
}

fn mapping_len(world: usize, slot_values: usize) -> usize {
    data_offset(world) + SETS * world * slot_values * 4
}

/// A rank's view of the group's mapping.
pub struct ShmGroup {
    map: MmapMut,
    path: PathBuf,
    rank: usize,
    world: usize,
    slot_values: usize,
    /// Barriers this rank has arrived at.
    barriers: u64,
    /// The set the next operation's first piece goes to.
    next_set: usize,
    /// Busy-wait rounds before sleeping: long when every rank has a core
    /// of its own, short when they take turns.
    spins: u32,
}

// The mapping is shared memory accessed through atomics and the barrier
// protocol; each range of a slot has one writer between two barriers.
unsafe impl Send for ShmGroup {}

/// What one operation is, for the barriers' checks and errors.
pub struct GroupOp<'a> {
    pub seq: u64,
    pub call: OpCall,
    pub timeout: Duration,
    /// The ring neighbours (rank, connection) a waiting rank probes.
    pub neighbours: [(usize, &'a TcpStream); 2],
}

impl ShmGroup {
    /// Creates the mapping under `dir` (rank 0 does this).
    pub fn create(dir: &Path, world: usize, slot_values: usize) -> io::Result<ShmGroup> {
        let len = mapping_len(world, slot_values);
        let (map, path) = mapping::create(dir, "lorafleet-group", len)?;
        let group = ShmGroup::new(map, path, 0, world, slot_values);
        let c = group.control();
        c.world.store(world as u64, Ordering::Relaxed);
        c.slot_values.store(slot_values as u64, Ordering::Relaxed);
        c.magic.store(MAGIC, Ordering::Release);
        Ok(group)
    }

    /// Maps the group rank 0 created at `path`.
    pub fn open(
        path: &Path,
        rank: usize,
        world: usize,
        slot_values: usize,
    ) -> io::Result<ShmGroup> {
        let map = mapping::open(path, mapping_len(world, slot_values))?;
        let group = ShmGroup::new(map, path.to_path_buf(), rank, world, slot_values);
        let c = group.control();
        if c.magic.load(Ordering::Acquire) != MAGIC
            || c.world.load(Ordering::Relaxed) != world as u64
            || c.slot_values.load(Ordering::Relaxed) != slot_values as u64
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not this ring's group", path.display()),
            ));
        }
        Ok(group)
    }

    fn new(map: MmapMut, path: PathBuf, rank: usize, world: usize, slot_values: usize) -> ShmGroup {
        assert!(rank < world && slot_values.is_multiple_of(LINE_VALUES));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ShmGroup {
            map,
            path,
            rank,
            world,
            slot_values,
            barriers: 0,
            next_set: 0,
            spins: if world <= cores { 20_000 } else { 50 },
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn control(&self) -> &Control {
        unsafe { &*(self.map.as_ptr() as *const Control) }
    }

    fn line(&self, rank: usize) -> &RankLine {
        debug_assert!(rank < self.world);
        unsafe {
            &*(self
                .map
                .as_ptr()
                .add(LINES_OFFSET + rank * size_of::<RankLine>()) as *const RankLine)
        }
    }

    /// The first value of rank `owner`'s slot in `set`.
    fn slot(&self, set: usize, owner: usize) -> *mut f32 {
        let index = (set * self.world + owner) * self.slot_values;
        unsafe { (self.map.as_ptr().add(data_offset(self.world)) as *mut f32).add(index) }
    }

    /// Rank `owner`'s slice of a piece of `len` values.
    fn slice(&self, owner: usize, len: usize) -> std::ops::Range<usize> {
        let per = len.div_ceil(self.world).next_multiple_of(LINE_VALUES);
        (owner * per).min(len)..((owner + 1) * per).min(len)
    }

    /// Runs one operation over `buf`: an all-reduce (sum), or a broadcast.
    pub fn run(&mut self, op: &GroupOp<'_>, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let root = match op.call.op {
            OpKind::AllReduceSum => None,
            OpKind::Broadcast { root } => Some(root as usize),
        };
        let n = buf.len();
        let sv = self.slot_values;
        let pieces = n.div_ceil(sv).max(1);
        let piece = |t: usize| (t * sv).min(n)..((t + 1) * sv).min(n);
        let line = self.line(self.rank);
        line.seq.store(op.seq, Ordering::Relaxed);
        line.op.store(encode(op.call.op), Ordering::Relaxed);
        line.count.store(op.call.count, Ordering::Relaxed);

        let base = self.next_set;
        let set = |t: usize| (base + t) % SETS;
        self.copy_in(set(0), &buf[piece(0)], root);
        self.barrier(op, true)?;
        for t in 0..pieces {
            if root.is_none() {
                self.sum_own_slice(set(t), &mut buf[piece(t)]);
            }
            if t > 0 {
                self.copy_out(set(t - 1), &mut buf[piece(t - 1)], root);
            }
            if t + 1 < pieces {
                self.copy_in(set(t + 1), &buf[piece(t + 1)], root);
            }
            self.barrier(op, false)?;
        }
        self.copy_out(set(pieces - 1), &mut buf[piece(pieces - 1)], root);
        self.next_set = set(pieces);
        Ok(())
    }

    /// Publishes a piece in this rank's slot: for an all-reduce, all but
    /// this rank's own slice (it sums that straight from `values`); for a
    /// broadcast, the root's whole piece.
    fn copy_in(&self, set: usize, values: &[f32], root: Option<usize>) {
        let slot = self.slot(set, self.rank);
        let parts = match root {
            Some(r) if r != self.rank => return,
            Some(_) => [0..values.len(), 0..0],
            None => {
                let own = self.slice(self.rank, values.len());
                [0..own.start, own.end..values.len()]
            }
        };
        for part in parts {
            // Until the next barrier this slot is written by this rank alone.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    values[part.clone()].as_ptr(),
                    slot.add(part.start),
                    part.len(),
                )
            };
        }
    }

    /// Sums this rank's slice of the piece in `set` across all ranks, in
    /// rank order (its own values from `values`), into both `values` and
    /// this rank's slot, where the others copy it from.
    fn sum_own_slice(&self, set: usize, values: &mut [f32]) {
        const BLOCK: usize = 1024;
        let mut acc = [0.0f32; BLOCK];
        let own = self.slice(self.rank, values.len());
        let mut at = own.start;
        while at < own.end {
            let m = BLOCK.min(own.end - at);
            let acc = &mut acc[..m];
            for owner in 0..self.world {
                // Between these barriers no one writes this slice of any
                // slot but this rank, and only in its own slot.
                let src = if owner == self.rank {
                    &values[at..at + m]
                } else {
                    unsafe { std::slice::from_raw_parts(self.slot(set, owner).add(at), m) }
                };
                if owner == 0 {
                    acc.copy_from_slice(src);
                } else {
                    acc.iter_mut().zip(src).for_each(|(a, s)| *a += s);
                }
            }
            values[at..at + m].copy_from_slice(acc);
            unsafe {
                std::ptr::copy_nonoverlapping(acc.as_ptr(), self.slot(set, self.rank).add(at), m)
            };
            at += m;
        }
    }

    /// Copies a finished piece out of `set` into `values`: the other ranks'
    /// sums (this rank's own is already there), or the root's piece.
    fn copy_out(&self, set: usize, values: &mut [f32], root: Option<usize>) {
        let len = values.len();
        // Every slot's finished part is read-only until the next barrier.
        match root {
            Some(r) if r == self.rank => {}
            Some(r) => unsafe {
                std::ptr::copy_nonoverlapping(self.slot(set, r), values.as_mut_ptr(), len)
            },
            None => {
                for owner in (0..self.world).filter(|&o| o != self.rank) {
                    let s = self.slice(owner, len);
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.slot(set, owner).add(s.start),
                            values[s.clone()].as_mut_ptr(),
                            s.len(),
                        )
                    };
                }
            }
        }
    }

    fn all_arrived(&self, barrier: u64) -> bool {
        (0..self.world).all(|r| self.line(r).arrived.load(Ordering::SeqCst) >= barrier)
    }

    /// Arrives at the next barrier and waits for every rank; on the first
    /// barrier of an operation, checks that all ranks call the same thing.
    fn barrier(&mut self, op: &GroupOp<'_>, check_calls: bool) -> Result<(), CollectiveError> {
        self.barriers += 1;
        let k = self.barriers;
        let c = self.control();
        self.line(self.rank).arrived.store(k, Ordering::SeqCst);
        if self.all_arrived(k) {
            c.generation.fetch_add(1, Ordering::SeqCst);
            if c.sleepers.load(Ordering::SeqCst) != 0 {
                futex_wake(&c.generation);
            }
        } else {
            self.wait(k, op)?;
        }
        // A closed group fails only the ranks still waiting: once every
        // rank has arrived, what they published is whole.
        if check_calls {
            self.check_calls(op)?;
        }
        Ok(())
    }

    fn wait(&self, k: u64, op: &GroupOp<'_>) -> Result<(), CollectiveError> {
        for _ in 0..self.spins {
            if self.all_arrived(k) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let c = self.control();
        let start = Instant::now();
        let mut next_probe = start + PROBE_EVERY;
        loop {
            c.sleepers.fetch_add(1, Ordering::SeqCst);
            let generation = c.generation.load(Ordering::SeqCst);
            if !self.all_arrived(k) && c.state.load(Ordering::SeqCst) == OPEN {
                futex_wait(&c.generation, generation, PROBE_EVERY);
            }
            c.sleepers.fetch_sub(1, Ordering::SeqCst);
            if self.all_arrived(k) {
                return Ok(());
            }
            if c.state.load(Ordering::SeqCst) != OPEN {
                return Err(self.closed_error());
            }
            let now = Instant::now();
            if now >= next_probe {
                next_probe = now + PROBE_EVERY;
                for (peer, stream) in op.neighbours {
                    if peer_gone(stream) {
                        return Err(CollectiveError::PeerLost {
                            rank: self.rank,
                            peer,
                            call: op.call.to_string(),
                            seq: op.seq,
                            detail: "its connection closed".into(),
                        });
                    }
                }
            }
            if now - start >= op.timeout {
                let missing = (0..self.world)
                    .find(|&r| self.line(r).arrived.load(Ordering::SeqCst) < k)
                    .unwrap_or(self.rank);
                return Err(CollectiveError::Timeout {
                    rank: self.rank,
                    peer: missing,
                    call: op.call.to_string(),
                    seq: op.seq,
                    secs: op.timeout.as_secs_f64(),
                });
            }
        }
    }

    /// Fails when any rank published another call than this one's.
    fn check_calls(&self, op: &GroupOp<'_>) -> Result<(), CollectiveError> {
        for peer in (0..self.world).filter(|&r| r != self.rank) {
            let line = self.line(peer);
            let seq = line.seq.load(Ordering::Relaxed);
            let call = decode(
                line.op.load(Ordering::Relaxed),
                line.count.load(Ordering::Relaxed),
            );
            if seq == op.seq && call == Some(op.call) {
                continue;
            }
            let described =
                call.map_or_else(|| "an unknown operation".to_string(), |c| c.to_string());
            return Err(CollectiveError::Mismatch {
                seq: op.seq,
                rank: self.rank,
                ours: op.call.to_string(),
                peer,
                theirs: if seq == op.seq {
                    described
                } else {
                    format!("{described} as its operation #{seq}")
                },
            });
        }
        Ok(())
    }

    /// Closes the group for every rank, with `reason`; the first close
    /// wins and later ones do nothing.
    pub fn close(&self, reason: &str) {
        let c = self.control();
        if c.state
            .compare_exchange(OPEN, CLOSING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let bytes = &reason.as_bytes()[..reason.len().min(REASON_MAX)];
            // Only the rank that won the exchange writes the reason.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.map.as_ptr().add(REASON_OFFSET) as *mut u8,
                    bytes.len(),
                )
            };
            c.reason_len.store(bytes.len() as u32, Ordering::SeqCst);
            c.state.store(CLOSED, Ordering::SeqCst);
        }
        c.generation.fetch_add(1, Ordering::SeqCst);
        futex_wake(&c.generation);
    }

    /// The error of a rank that finds the group closed by another.
    fn closed_error(&self) -> CollectiveError {
        let c = self.control();
        let until = Instant::now() + Duration::from_millis(100);
        while c.state.load(Ordering::SeqCst) == CLOSING && Instant::now() < until {
            std::hint::spin_loop();
        }
        let message = if c.state.load(Ordering::SeqCst) == CLOSED {
            let len = (c.reason_len.load(Ordering::SeqCst) as usize).min(REASON_MAX);
            let bytes =
                unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(REASON_OFFSET), len) };
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            "another rank closed the shared-memory group".to_string()
        };
        CollectiveError::Aborted {
            rank: self.rank,
            message,
        }
    }
}

fn encode(op: OpKind) -> u64 {
    match op {
        OpKind::AllReduceSum => 1,
        OpKind::Broadcast { root } => 2 | (root as u64) << 8,
    }
}

fn decode(op: u64, count: u64) -> Option<OpCall> {
    let op = match op & 0xff {
        1 => OpKind::AllReduceSum,
        2 => OpKind::Broadcast {
            root: (op >> 8) as u32,
        },
        _ => return None,
    };
    Some(OpCall { op, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_a_piece_once_on_whole_cache_lines() {
        let dir = tempfile::tempdir().unwrap();
        for world in [2, 3, 4, 7] {
            let group = ShmGroup::create(dir.path(), world, 64).unwrap();
            for len in [0, 1, 15, 16, 17, 63, 64] {
                let mut next = 0;
                for owner in 0..world {
                    let s = group.slice(owner, len);
                    assert_eq!(s.start, next, "world {world} len {len}");
                    assert!(s.start == len || s.start.is_multiple_of(LINE_VALUES));
                    next = s.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn slots_stay_within_the_budget() {
        for world in [2, 8, 64, 1024] {
            let v = slot_values(512 * 1024, world);
            assert!(v.is_multiple_of(LINE_VALUES) && v > 0);
            assert!(SETS * world * v * 4 <= SLOTS_BUDGET_BYTES.max(SETS * world * 64));
        }
        assert_eq!(slot_values(512 * 1024, 4), 128 * 1024);
        assert_eq!(slot_values(4, 2), LINE_VALUES);
    }

    #[test]
    fn a_closed_group_names_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShmGroup::create(dir.path(), 2, 64).unwrap();
        let b = ShmGroup::open(a.path(), 1, 2, 64).unwrap();
        a.close("rank 0 saw something");
        a.close("a later reason");
        let e = b.closed_error().to_string();
        assert!(e.contains("rank 0 saw something"), "{e}");
        assert!(!e.contains("later"), "{e}");
    }

    #[test]
    fn another_rings_mapping_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShmGroup::create(dir.path(), 2, 64).unwrap();
        assert!(ShmGroup::open(a.path(), 1, 3, 64).is_err());
        assert!(ShmGroup::open(a.path(), 1, 2, 128).is_err());
    }
}
