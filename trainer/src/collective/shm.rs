//! Ring links through shared memory, for ranks on the same host.
//!
//! A [`Region`] is a single-producer single-consumer byte ring in a file
//! under `/dev/shm`, mapped by both ranks: the writer copies frames in, the
//! reader adds or copies values straight out of the mapping (one copy per
//! byte, against TCP's two plus the kernel's). Waiting uses a process-shared
//! futex after a short spin, so ranks that outnumber the cores do not burn
//! them. The rank's TCP connection stays open beside the region: its end of
//! stream is how a dead peer is noticed while waiting.
//!
//! The receiving rank creates the region during the handshake, the sender
//! maps it, and the file is unlinked as soon as both have it, so nothing is
//! left in `/dev/shm` when a rank is killed.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use super::link::{Inbound, Outbound};
use super::mapping::{self, futex_wait, futex_wake, peer_gone};

const MAGIC: u64 = 0x4c46_5348_4d52_0001;
/// Bytes of the ring's data area: 1 to 8 MiB measured the same; 4 MiB keeps
/// eight ranks within a container's default 64 MiB `/dev/shm`.
pub const CAPACITY: usize = 4 << 20;
const DATA_OFFSET: usize = 4096;
/// Busy-wait this many times before sleeping on the futex.
const SPINS: u32 = 20;
/// How often a waiting side checks that its peer's process is alive.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// The control block at the start of the mapping; each side's counters on
/// their own cache line.
#[repr(C, align(64))]
struct Control {
    magic: AtomicU64,
    capacity: AtomicU64,
    closed: AtomicU32,
    _pad0: [u8; 44],
    /// Bytes written, ever. Only the writer stores it.
    head: AtomicU64,
    head_seq: AtomicU32,
    reader_waiting: AtomicU32,
    _pad1: [u8; 48],
    /// Bytes consumed, ever. Only the reader stores it.
    tail: AtomicU64,
    tail_seq: AtomicU32,
    writer_waiting: AtomicU32,
    _pad2: [u8; 48],
}

/// A mapped ring buffer.
pub struct Region {
    map: MmapMut,
    path: PathBuf,
}

// The mapping is shared memory accessed through atomics and the SPSC
// protocol below; the raw bytes are touched only by the one writer (free
// space) and the one reader (filled space).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Creates a fresh region under `dir` (the receiving side does this).
    pub fn create(dir: &Path, tag: &str) -> io::Result<Region> {
        let prefix = format!("lorafleet-ring-{tag}");
        let (map, path) = mapping::create(dir, &prefix, DATA_OFFSET + CAPACITY)?;
        let region = Region { map, path };
        let c = region.control();
        c.capacity.store(CAPACITY as u64, Ordering::Relaxed);
        c.magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    /// Maps a region another rank created (the sending side).
    pub fn open(path: &Path) -> io::Result<Region> {
        let map = mapping::open(path, DATA_OFFSET + CAPACITY)?;
        let region = Region {
            map,
            path: path.to_path_buf(),
        };
        let c = region.control();
        if c.magic.load(Ordering::Acquire) != MAGIC
            || c.capacity.load(Ordering::Relaxed) != CAPACITY as u64
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a lorafleet ring region", path.display()),
            ));
        }
        Ok(region)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file; the mappings live on.
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn control(&self) -> &Control {
        unsafe { &*(self.map.as_ptr() as *const Control) }
    }

    fn data(&self) -> *mut u8 {
        unsafe { (self.map.as_ptr() as *mut u8).add(DATA_OFFSET) }
    }

    /// Makes every wait on the region, on both sides, fail.
    pub fn close(&self) {
        let c = self.control();
        c.closed.store(1, Ordering::SeqCst);
        c.head_seq.fetch_add(1, Ordering::SeqCst);
        c.tail_seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&c.head_seq);
        futex_wake(&c.tail_seq);
    }
}

/// Waits until `ready()`, sleeping on `seq` (with `waiting` raised so the
/// other side wakes us) after a short spin. Fails when the region is
/// closed, the peer's socket ends, or nothing happens for `timeout`.
fn wait(
    region: &Region,
    seq: &AtomicU32,
    waiting: &AtomicU32,
    peer: &TcpStream,
    timeout: Duration,
    ready: impl Fn() -> bool,
) -> io::Result<()> {
    for _ in 0..SPINS {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let c = region.control();
    let start = Instant::now();
    let mut next_probe = start + PROBE_EVERY;
    loop {
        waiting.store(1, Ordering::SeqCst);
        let observed = seq.load(Ordering::SeqCst);
        if ready() {
            waiting.store(0, Ordering::SeqCst);
            return Ok(());
        }
        if c.closed.load(Ordering::SeqCst) != 0 {
            waiting.store(0, Ordering::SeqCst);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the shared-memory link was closed",
            ));
        }
        futex_wait(seq, observed, Duration::from_millis(5));
        waiting.store(0, Ordering::SeqCst);
        if ready() {
            return Ok(());
        }
        let now = Instant::now();
        if now - start >= timeout {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no progress"));
        }
        if now >= next_probe {
            next_probe = now + PROBE_EVERY;
            if peer_gone(peer) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed its connection",
                ));
            }
        }
    }
}

/// The writing end of a region.
pub struct ShmOut {
    pub region: Arc<Region>,
    pub tcp: Arc<TcpStream>,
    pub timeout: Duration,
}

impl ShmOut {
    fn write(&self, mut bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.len().is_multiple_of(4));
        let c = self.region.control();
        let data = self.region.data();
        let mut head = c.head.load(Ordering::Relaxed);
        while !bytes.is_empty() {
            let tail = c.tail.load(Ordering::Acquire);
            let free = CAPACITY - (head - tail) as usize;
            if free == 0 {
                wait(
                    &self.region,
                    &c.tail_seq,
                    &c.writer_waiting,
                    &self.tcp,
                    self.timeout,
                    || c.tail.load(Ordering::Acquire) != tail,
                )?;
                continue;
            }
            let n = free.min(bytes.len());
            let pos = (head % CAPACITY as u64) as usize;
            let first = n.min(CAPACITY - pos);
            // Free space belongs to the writer until `head` is published.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(pos), first);
                std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, n - first);
            }
            head += n as u64;
            c.head.store(head, Ordering::Release);
            c.head_seq.fetch_add(1, Ordering::SeqCst);
            if c.reader_waiting.load(Ordering::SeqCst) != 0 {
                futex_wake(&c.head_seq);
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl Outbound for ShmOut {
    fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        parts.iter().try_for_each(|p| self.write(p))
    }

    fn transport(&self) -> &'static str {
        "shm"
    }
}

/// The reading end of a region.
pub struct ShmIn {
    pub region: Arc<Region>,
    pub tcp: Arc<TcpStream>,
    pub timeout: Duration,
}

impl ShmIn {
    /// Hands the next `len` bytes to `f` in at most two pieces (the ring
    /// wraps), then frees them.
    fn consume(&self, mut len: usize, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let c = self.region.control();
        let data = self.region.data();
        let mut tail = c.tail.load(Ordering::Relaxed);
        while len > 0 {
            let head = c.head.load(Ordering::Acquire);
            let available = (head - tail) as usize;
            if available == 0 {
                wait(
                    &self.region,
                    &c.head_seq,
                    &c.reader_waiting,
                    &self.tcp,
                    self.timeout,
                    || c.head.load(Ordering::Acquire) != tail,
                )?;
                continue;
            }
            let n = available.min(len);
            let pos = (tail % CAPACITY as u64) as usize;
            let first = n.min(CAPACITY - pos);
            // Filled space belongs to the reader until `tail` is published.
            unsafe {
                f(std::slice::from_raw_parts(data.add(pos), first));
                if n > first {
                    f(std::slice::from_raw_parts(data, n - first));
                }
            }
            tail += n as u64;
            c.tail.store(tail, Ordering::Release);
            c.tail_seq.fetch_add(1, Ordering::SeqCst);
            if c.writer_waiting.load(Ordering::SeqCst) != 0 {
                futex_wake(&c.tail_seq);
            }
            len -= n;
        }
        Ok(())
    }
}

impl Inbound for ShmIn {
    fn recv(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        self.consume(out.len(), |piece| {
            out[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        })
    }

    fn recv_add(&mut self, dst: &mut [f32]) -> io::Result<()> {
        let mut at = 0;
        self.consume(dst.len() * 4, |piece| {
            // Every frame is a multiple of 4 bytes, so values never straddle
            // the wrap and the mapping keeps them aligned.
            let values: &[f32] = bytemuck::cast_slice(piece);
            for (d, s) in dst[at..at + values.len()].iter_mut().zip(values) {
                *d += s;
            }
            at += values.len();
        })
    }

    fn transport(&self) -> &'static str {
        "shm"
    }
}

/// This host's identity for choosing shared memory: the kernel's boot id
/// (ranks that share it share `/dev/shm`, unless a container separates
/// them, in which case opening the region fails and TCP is used).
pub fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where regions are created.
pub fn shm_dir() -> PathBuf {
    PathBuf::from("/dev/shm")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn bytes_cross_the_ring_in_order_across_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let reader_region = Arc::new(Region::create(dir.path(), "t").unwrap());
        let writer_region = Arc::new(Region::open(reader_region.path()).unwrap());
        reader_region.unlink();
        let (a, b) = pair();
        let timeout = Duration::from_secs(10);
        let mut out = ShmOut {
            region: writer_region,
            tcp: Arc::new(a),
            timeout,
        };
        let mut inb = ShmIn {
            region: reader_region,
            tcp: Arc::new(b),
            timeout,
        };
        // 3.5 capacities of values, in uneven pieces.
        let n = CAPACITY * 7 / 8;
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for piece in values.chunks(123_457) {
                    out.send(&[bytemuck::cast_slice(piece)]).unwrap();
                }
            });
            let mut got = vec![1.0f32; n];
            for piece in got.chunks_mut(99_991) {
                inb.recv_add(piece).unwrap();
            }
            assert!(got.iter().zip(&values).all(|(g, v)| *g == v + 1.0));
        });
    }

    #[test]
    fn a_dead_writer_fails_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let region = Arc::new(Region::create(dir.path(), "t").unwrap());
        let (a, b) = pair();
        let mut inb = ShmIn {
            region,
            tcp: Arc::new(b),
            timeout: Duration::from_secs(30),
        };
        drop(a);
        let start = Instant::now();
        let err = inb.recv(&mut [0u8; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_silent_writer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let region = Arc::new(Region::create(dir.path(), "t").unwrap());
        let (_a, b) = pair();
        let mut inb = ShmIn {
            region,
            tcp: Arc::new(b),
            timeout: Duration::from_millis(200),
        };
        let err = inb.recv(&mut [0u8; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
