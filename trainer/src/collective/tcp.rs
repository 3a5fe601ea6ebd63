//! Ring links over TCP: the socket settings and the byte moves.
//!
//! Sockets get TCP_NODELAY (chunks are sent whole, there is nothing to
//! coalesce), 4 MiB kernel buffers, and the ring's timeout as their read
//! and write timeouts, so a stalled peer surfaces as `TimedOut`.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::link::{Inbound, Outbound};

const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Prepares a connected socket for ring traffic.
pub fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    set_buffer_sizes(stream);
    Ok(())
}

#[cfg(unix)]
fn set_buffer_sizes(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER_BYTES as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // Best effort: the kernel caps it at net.core.{w,r}mem_max.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(not(unix))]
fn set_buffer_sizes(_stream: &TcpStream) {}

pub struct TcpOut {
    pub stream: Arc<TcpStream>,
}

impl Outbound for TcpOut {
    fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        let mut stream = &*self.stream;
        while !rest.is_empty() {
            match stream.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }
}

pub struct TcpIn {
    pub stream: Arc<TcpStream>,
    /// Where incoming values wait to be added.
    scratch: Vec<f32>,
}

impl TcpIn {
    pub fn new(stream: Arc<TcpStream>) -> TcpIn {
        TcpIn {
            stream,
            scratch: Vec::new(),
        }
    }
}

impl Inbound for TcpIn {
    fn recv(&mut self, out: &mut [u8]) -> io::Result<()> {
        (&*self.stream).read_exact(out)
    }

    fn recv_add(&mut self, dst: &mut [f32]) -> io::Result<()> {
        self.scratch.resize(dst.len(), 0.0);
        (&*self.stream).read_exact(bytemuck::cast_slice_mut(&mut self.scratch))?;
        for (d, s) in dst.iter_mut().zip(&self.scratch) {
            *d += s;
        }
        Ok(())
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }
}
