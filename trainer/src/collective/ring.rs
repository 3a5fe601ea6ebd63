//! [`TcpRing`]: N ranks in a ring, connected over TCP (with shared memory
//! for same-host links by `rendezvous`), running the schedules of
//! `schedule`.
//!
//! Each operation starts by passing an `OpStart` frame to the next rank and
//! checking the one from the previous rank, and moves its data in chunks:
//! a sender thread writes chunks as soon as they are ready while the
//! calling thread receives and reduces.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::frame::{HEADER_BYTES, Header, abort_frame};
use super::link::{Inbound, LinkCloser, Outbound};
use super::rendezvous::{self, Links};
use super::schedule::{self, Schedule};
use super::{Collective, CollectiveError, OpCall, OpKind, RingConfig};

/// A connected ring of `world` ranks.
pub struct TcpRing {
    rank: usize,
    world: usize,
    timeout: Duration,
    chunk_values: usize,
    next: Box<dyn Outbound>,
    prev: Box<dyn Inbound>,
    next_closer: LinkCloser,
    prev_closer: LinkCloser,
    /// Operations started so far.
    seq: u64,
    /// Set by the first error; every later call fails with it.
    broken: Option<String>,
    /// Whether the outgoing link sits between frames (an abort frame may
    /// follow): false once a send failed or was cut mid-frame.
    outbound_clean: bool,
    /// Every rank's shared mapping, when all ranks share this host: then
    /// operations go through it and the links only watch for dead peers.
    #[cfg(target_os = "linux")]
    group: Option<super::group::ShmGroup>,
}

impl std::fmt::Debug for TcpRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRing")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("next", &self.next.transport())
            .field("prev", &self.prev.transport())
            .field("group", &self.uses_group())
            .finish()
    }
}

impl TcpRing {
    /// Joins the ring described by `config`, waiting up to its timeout for
    /// the other ranks.
    pub fn connect(config: &RingConfig) -> Result<TcpRing, CollectiveError> {
        let world = config.world();
        let rank = config.rank;
        if !(2..=1024).contains(&world) {
            return Err(CollectiveError::Config(format!(
                "a ring needs 2 to 1024 ranks, not {world}"
            )));
        }
        if rank >= world {
            return Err(CollectiveError::Config(format!(
                "rank {rank} is outside a world of {world}"
            )));
        }
        if config.secret.len() < 16 {
            return Err(CollectiveError::Config(
                "the ring secret must have at least 16 bytes".into(),
            ));
        }
        let Links {
            next,
            prev,
            next_closer,
            prev_closer,
        } = rendezvous::establish(config)?;
        let mut ring = TcpRing {
            rank,
            world,
            timeout: config.timeout,
            chunk_values: (config.chunk_bytes / 4).max(1),
            next,
            prev,
            next_closer,
            prev_closer,
            seq: 0,
            broken: None,
            outbound_clean: true,
            #[cfg(target_os = "linux")]
            group: None,
        };
        #[cfg(target_os = "linux")]
        {
            let local = ring.transports() == ("shm", "shm");
            ring.group =
                rendezvous::form_group(&mut ring, config.shared_group, local, config.chunk_bytes)?;
            // Set-up operations are not counted in the numbers errors name.
            ring.seq = 0;
        }
        Ok(ring)
    }

    /// Whether operations go through a shared-memory group.
    pub fn uses_group(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.group.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// The transports of the outgoing and incoming links ("tcp" or "shm").
    pub fn transports(&self) -> (&'static str, &'static str) {
        (self.next.transport(), self.prev.transport())
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Runs one operation: the `OpStart` check, then `schedule` over `buf`.
    fn operate(
        &mut self,
        call: OpCall,
        buf: &mut [f32],
        schedule: impl FnOnce(usize) -> Schedule,
    ) -> Result<(), CollectiveError> {
        if let Some(cause) = &self.broken {
            return Err(CollectiveError::Broken {
                rank: self.rank,
                cause: cause.clone(),
            });
        }
        self.seq += 1;
        #[cfg(target_os = "linux")]
        let prev_rank = self.prev_rank();
        #[cfg(target_os = "linux")]
        if let Some(group) = &mut self.group {
            let op = super::group::GroupOp {
                seq: self.seq,
                call,
                timeout: self.timeout,
                neighbours: [
                    (prev_rank, &self.prev_closer.tcp),
                    ((self.rank + 1) % self.world, &self.next_closer.tcp),
                ],
            };
            let result = group.run(&op, buf);
            if let Err(e) = &result {
                self.break_ring(e);
            }
            return result;
        }
        let result = self
            .start(call)
            .and_then(|()| self.transfer(call, buf, schedule(self.chunk_values)));
        if let Err(e) = &result {
            self.break_ring(e);
        }
        result
    }

    /// Tells the next rank what this one is doing and checks that the
    /// previous rank is doing the same.
    fn start(&mut self, call: OpCall) -> Result<(), CollectiveError> {
        let seq = self.seq;
        let header = Header::OpStart { seq, call }.encode();
        let ctx = self.context(call);
        if let Err(e) = self.next.send(&[&header]) {
            self.outbound_clean = false;
            return Err(ctx.send_failed(e, &self.next_closer));
        }
        match read_header(&mut *self.prev, &ctx)? {
            Header::OpStart {
                seq: their_seq,
                call: their_call,
            } if their_seq == seq && their_call == call => Ok(()),
            Header::OpStart {
                seq: their_seq,
                call: their_call,
            } => Err(CollectiveError::Mismatch {
                seq,
                rank: self.rank,
                ours: call.to_string(),
                peer: self.prev_rank(),
                theirs: if their_seq == seq {
                    their_call.to_string()
                } else {
                    format!("{their_call} as its operation #{their_seq}")
                },
            }),
            Header::Data { seq: s, .. } => Err(CollectiveError::Mismatch {
                seq,
                rank: self.rank,
                ours: call.to_string(),
                peer: self.prev_rank(),
                theirs: format!("a larger operation #{s}"),
            }),
            Header::Abort { .. } => unreachable!("read_header turns aborts into errors"),
        }
    }

    fn context(&self, call: OpCall) -> OpContext {
        OpContext {
            rank: self.rank,
            peer: self.prev_rank(),
            next: (self.rank + 1) % self.world,
            call,
            seq: self.seq,
            timeout: self.timeout,
        }
    }

    /// Moves the data of one operation: a sender thread writes the
    /// schedule's sends as their inputs become ready; this thread receives.
    fn transfer(
        &mut self,
        call: OpCall,
        buf: &mut [f32],
        schedule: Schedule,
    ) -> Result<(), CollectiveError> {
        if schedule.sends.is_empty() && schedule.recvs.is_empty() {
            return Ok(());
        }
        let ctx = self.context(call);
        let shared = SharedBuf {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        let progress = Progress {
            recv_done: AtomicUsize::new(0),
            sent_done: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            receiver: thread::current(),
            began: Instant::now(),
            last_moved_ms: AtomicU64::new(0),
        };
        let seq = self.seq;
        let next = &mut self.next;
        let prev = &mut self.prev;
        let prev_closer = &self.prev_closer;
        let next_closer = &self.next_closer;
        let sends = &schedule.sends;
        let (result, clean) = thread::scope(|s| {
            let mut cut = false;
            let sender = s.spawn(|| {
                let result = send_all(&mut **next, sends, &shared, &progress, seq);
                if result.is_err() {
                    // Wake the receiving thread out of any read.
                    progress.abort.store(true, Ordering::SeqCst);
                    prev_closer.stop_reading();
                    progress.receiver.unpark();
                }
                result
            });
            let received = recv_all(
                &mut **prev,
                &ctx,
                &schedule,
                &shared,
                &progress,
                sender.thread(),
            );
            if received.is_err() {
                progress.abort.store(true, Ordering::SeqCst);
                sender.thread().unpark();
                // A sender blocked on a full link must not hold us: give it
                // a moment to stop at a frame boundary, then cut the link.
                let until = Instant::now() + Duration::from_millis(200);
                while !sender.is_finished() && Instant::now() < until {
                    thread::sleep(Duration::from_millis(1));
                }
                if !sender.is_finished() {
                    next_closer.close();
                    cut = true;
                }
            }
            let sent = sender.join().expect("the sender does not panic");
            // A sender that finished, or stopped between frames on an open
            // link, leaves it fit to carry an abort frame.
            let clean = sent.is_ok()
                || !cut
                    && sent
                        .as_ref()
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::Interrupted);
            let result = match (received, sent) {
                (Ok(()), Ok(())) => Ok(()),
                (Ok(()), Err(e)) => Err(ctx.send_failed(e, next_closer)),
                // The first cause: a receive failed because the send did.
                (Err(_), Err(e)) if e.kind() != std::io::ErrorKind::Interrupted && !cut => {
                    Err(ctx.send_failed(e, next_closer))
                }
                (Err(e), _) => Err(e),
            };
            (result, clean)
        });
        self.outbound_clean = clean;
        result
    }

    /// Marks the ring broken, tells both neighbours why and closes both
    /// links.
    ///
    /// The next rank reads the abort frame in place of its next frame, when
    /// the link sits at a frame boundary. The previous rank never reads its
    /// outgoing connection in normal operation; it looks there when a send
    /// to this rank fails (see [`OpContext::send_failed`]), so a failure
    /// that spreads backwards around the ring still names where it began.
    fn break_ring(&mut self, error: &CollectiveError) {
        let reason = match error {
            CollectiveError::Aborted { message, .. } => message.clone(),
            other => other.to_string(),
        };
        #[cfg(target_os = "linux")]
        if let Some(group) = &self.group {
            group.close(&reason);
        }
        let frame = abort_frame(&reason);
        if self.outbound_clean {
            let _ = self.next.send(&[&frame]);
        }
        let _ = (&*self.prev_closer.tcp).write_all(&frame);
        self.next_closer.close();
        self.prev_closer.close();
        self.broken = Some(reason);
    }
}

impl Drop for TcpRing {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(group) = &self.group {
            group.close(&format!("rank {} left the ring", self.rank));
        }
        self.next_closer.close();
        self.prev_closer.close();
    }
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let call = OpCall {
            op: OpKind::AllReduceSum,
            count: buf.len() as u64,
        };
        let (n, rank, world) = (buf.len(), self.rank, self.world);
        self.operate(call, buf, |chunk| {
            schedule::all_reduce(n, rank, world, chunk)
        })
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world {
            return Err(CollectiveError::Config(format!(
                "broadcast from rank {root} in a world of {}",
                self.world
            )));
        }
        let call = OpCall {
            op: OpKind::Broadcast { root: root as u32 },
            count: buf.len() as u64,
        };
        let (n, rank, world) = (buf.len(), self.rank, self.world);
        self.operate(call, buf, |chunk| {
            schedule::broadcast(n, rank, world, root, chunk)
        })
    }
}

fn recv_all(
    prev: &mut dyn Inbound,
    ctx: &OpContext,
    schedule: &Schedule,
    shared: &SharedBuf,
    progress: &Progress,
    sender: &thread::Thread,
) -> Result<(), CollectiveError> {
    for (i, item) in schedule.recvs.iter().enumerate() {
        while progress.sent_done.load(Ordering::Acquire) < item.after_sent {
            if progress.abort.load(Ordering::SeqCst) {
                return Err(ctx.protocol("the sending side failed".into()));
            }
            // Our sends wait on data from the previous rank, or on a next
            // rank that itself waits on it: either way the ring stalled.
            if progress.stalled(ctx.timeout) {
                return Err(ctx.io(std::io::ErrorKind::TimedOut.into()));
            }
            thread::park_timeout(Duration::from_millis(10));
        }
        let expected = Header::Data {
            seq: ctx.seq,
            index: i as u64,
            bytes: (item.range.len() * 4) as u64,
        };
        let header = read_header(prev, ctx)?;
        if header != expected {
            return Err(match header {
                Header::OpStart { seq, call } => CollectiveError::Mismatch {
                    seq: ctx.seq,
                    rank: ctx.rank,
                    ours: ctx.call.to_string(),
                    peer: ctx.peer,
                    theirs: format!("a shorter operation, then {call} as #{seq}"),
                },
                other => ctx.protocol(format!("expected {expected:?}, got {other:?}")),
            });
        }
        // Only this thread writes `item.range` now: the sender is done
        // with it (after_sent) and will not read it before recv_done.
        let dst = unsafe { shared.slice_mut(item.range.clone()) };
        let got = if item.reduce {
            prev.recv_add(dst)
        } else {
            prev.recv_f32(dst)
        };
        got.map_err(|e| ctx.io(e))?;
        progress.moved();
        progress.recv_done.store(i + 1, Ordering::Release);
        sender.unpark();
    }
    Ok(())
}

/// Reads the next header from the previous rank; an abort frame becomes
/// [`CollectiveError::Aborted`] with the sender's reason.
fn read_header(prev: &mut dyn Inbound, ctx: &OpContext) -> Result<Header, CollectiveError> {
    let mut bytes = [0u8; HEADER_BYTES];
    prev.recv(&mut bytes).map_err(|e| ctx.io(e))?;
    let header = Header::decode(&bytes).map_err(|detail| ctx.protocol(detail))?;
    if let Header::Abort { bytes, padded } = header {
        let mut text = vec![0u8; padded as usize];
        prev.recv(&mut text).map_err(|e| ctx.io(e))?;
        text.truncate(bytes as usize);
        return Err(CollectiveError::Aborted {
            rank: ctx.rank,
            message: String::from_utf8_lossy(&text).into_owned(),
        });
    }
    Ok(header)
}

/// How long a rank whose send failed waits for the next rank's reason.
const BACKWARD_ABORT_WAIT: Duration = Duration::from_millis(500);

/// Reads the abort frame a rank that broke the ring wrote back on its
/// incoming connection, `next` here; `None` if there is none (the rank
/// died, or closed without one).
fn backward_abort(next: &TcpStream) -> Option<String> {
    next.set_read_timeout(Some(BACKWARD_ABORT_WAIT)).ok()?;
    let mut stream = next;
    let mut bytes = [0u8; HEADER_BYTES];
    stream.read_exact(&mut bytes).ok()?;
    let Ok(Header::Abort { bytes, padded }) = Header::decode(&bytes) else {
        return None;
    };
    let mut text = vec![0u8; padded as usize];
    stream.read_exact(&mut text).ok()?;
    text.truncate(bytes as usize);
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// What an error inside one operation names.
struct OpContext {
    rank: usize,
    /// The rank this one receives from.
    peer: usize,
    /// The rank this one sends to.
    next: usize,
    call: OpCall,
    seq: u64,
    timeout: Duration,
}

impl OpContext {
    /// A failed receive from the previous rank.
    fn io(&self, e: std::io::Error) -> CollectiveError {
        self.link_error(e, self.peer)
    }

    /// A failed send to the next rank: the reason that rank gave when it
    /// broke the ring, if it wrote one back on `next`, else the link error.
    fn send_failed(&self, e: std::io::Error, next: &LinkCloser) -> CollectiveError {
        use std::io::ErrorKind::*;
        if !matches!(e.kind(), TimedOut | WouldBlock | Interrupted)
            && let Some(message) = backward_abort(&next.tcp)
        {
            return CollectiveError::Aborted {
                rank: self.rank,
                message,
            };
        }
        self.link_error(e, self.next)
    }

    fn link_error(&self, e: std::io::Error, peer: usize) -> CollectiveError {
        use std::io::ErrorKind::*;
        match e.kind() {
            TimedOut | WouldBlock => CollectiveError::Timeout {
                rank: self.rank,
                peer,
                call: self.call.to_string(),
                seq: self.seq,
                secs: self.timeout.as_secs_f64(),
            },
            _ => CollectiveError::PeerLost {
                rank: self.rank,
                peer,
                call: self.call.to_string(),
                seq: self.seq,
                detail: match e.kind() {
                    UnexpectedEof => "its connection closed".to_string(),
                    _ => e.to_string(),
                },
            },
        }
    }

    fn protocol(&self, detail: String) -> CollectiveError {
        CollectiveError::Protocol {
            rank: self.rank,
            peer: self.peer,
            call: self.call.to_string(),
            seq: self.seq,
            detail,
        }
    }
}

/// How far the two threads of a transfer have come.
struct Progress {
    recv_done: AtomicUsize,
    sent_done: AtomicUsize,
    abort: AtomicBool,
    receiver: thread::Thread,
    /// When the transfer began, and milliseconds from then to the last
    /// item sent or received: a wait between items is bounded by the
    /// timeout from there, not only each read or write.
    began: Instant,
    last_moved_ms: AtomicU64,
}

impl Progress {
    fn moved(&self) {
        let ms = self.began.elapsed().as_millis() as u64;
        self.last_moved_ms.store(ms, Ordering::Release);
    }

    /// Whether nothing moved either way for `timeout`.
    fn stalled(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.last_moved_ms.load(Ordering::Acquire));
        self.began.elapsed().saturating_sub(last) > timeout
    }
}

/// The operation's buffer, shared by the sending and receiving threads.
/// They touch disjoint ranges at any time, ordered by [`Progress`].
struct SharedBuf {
    ptr: *mut f32,
    len: usize,
}

unsafe impl Sync for SharedBuf {}

impl SharedBuf {
    /// # Safety
    /// No other thread may write `range` while the slice lives.
    unsafe fn slice(&self, range: Range<usize>) -> &[f32] {
        assert!(range.end <= self.len);
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }

    /// # Safety
    /// No other thread may touch `range` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.end <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

/// The sender thread: each send item once its inputs have arrived.
fn send_all(
    next: &mut dyn Outbound,
    sends: &[schedule::SendItem],
    shared: &SharedBuf,
    progress: &Progress,
    seq: u64,
) -> std::io::Result<()> {
    for (i, item) in sends.iter().enumerate() {
        while progress.recv_done.load(Ordering::Acquire) < item.after_recv {
            if progress.abort.load(Ordering::SeqCst) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            thread::park_timeout(Duration::from_millis(10));
        }
        if progress.abort.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        // The receiver finished writing `item.range` (after_recv) and will
        // not write it again before sent_done passes this item.
        let values = unsafe { shared.slice(item.range.clone()) };
        let header = Header::Data {
            seq,
            index: i as u64,
            bytes: (values.len() * 4) as u64,
        }
        .encode();
        next.send(&[&header, bytemuck::cast_slice(values)])?;
        progress.moved();
        progress.sent_done.store(i + 1, Ordering::Release);
        progress.receiver.unpark();
    }
    Ok(())
}
