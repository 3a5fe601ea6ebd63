//! The real [`DeviceComm`]: cudarc's NCCL communicator on this process's
//! GPU 0 (the one `CUDA_VISIBLE_DEVICES` gives it).
//!
//! cudarc opens libnccl with dlopen at run time and looks for
//! `libnccl.so` and `libnccl.so.{CUDA major, 12, 11, 10, 9, 1}`, never
//! `libnccl.so.2`, which is what NCCL packages install: where only that
//! exists, a `libnccl.so` link to it on `LD_LIBRARY_PATH` is needed
//! (docs/GPU.md; `scripts/gpu-check` makes one). Every operation copies the
//! host buffer to the GPU, reduces it there, and copies it back; a wait
//! past the timeout aborts the communicator, so a peer that dies inside
//! NCCL is an error, not a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::{DeviceComm, NcclCollective, UNIQUE_ID_BYTES, UniqueId};
use crate::collective::{Collective, CollectiveError};

/// NCCL on this process's GPU, with a bound on every wait.
pub struct CudaNccl {
    /// `None` once aborted after a timeout.
    comm: Option<OwnedComm>,
    stream: Arc<CudaStream>,
    timeout: Duration,
}

/// cudarc's communicator, which holds a raw `ncclComm_t` and so is not
/// `Send` by itself.
struct OwnedComm(Comm);

// SAFETY: NCCL lets a communicator be used from any thread as long as
// calls on it do not overlap; `CudaNccl` owns this one and every call
// takes `&mut self`, so they never do.
unsafe impl Send for OwnedComm {}

/// Whether libnccl can be loaded (cudarc panics on first use otherwise).
pub fn nccl_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn no_nccl() -> String {
    "cannot load libnccl.so (cudarc looks for libnccl.so and libnccl.so.{12,11,10,9,1}, \
     not libnccl.so.2: link libnccl.so to it on LD_LIBRARY_PATH)"
        .into()
}

/// A fresh NCCL unique id (rank 0's part of the set-up).
pub fn new_unique_id() -> Result<UniqueId, String> {
    if !nccl_present() {
        return Err(no_nccl());
    }
    let id = Id::new().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?;
    Ok(id.internal().map(|c| c as u8))
}

impl CudaNccl {
    /// Joins the communicator `id` names as `rank` of `world`, on GPU 0.
    pub fn join(
        id: UniqueId,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<CudaNccl, String> {
        if !nccl_present() {
            return Err(no_nccl());
        }
        let ctx = CudaContext::new(0).map_err(|e| format!("GPU 0: {e}"))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("a CUDA stream: {e}"))?;
        let internal: [core::ffi::c_char; UNIQUE_ID_BYTES] = id.map(|b| b as core::ffi::c_char);
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal))
            .map_err(|e| format!("ncclCommInitRank: {e:?}"))?;
        Ok(CudaNccl {
            comm: Some(OwnedComm(comm)),
            stream,
            timeout,
        })
    }

    /// Runs `op` on a device copy of `buf`, waits at most the timeout for
    /// it, and copies the result back.
    fn on_device(
        &mut self,
        buf: &mut [f32],
        what: &str,
        op: impl FnOnce(&Comm, &mut cudarc::driver::CudaSlice<f32>) -> Result<(), String>,
    ) -> Result<(), String> {
        let Some(OwnedComm(comm)) = &self.comm else {
            return Err("the communicator was aborted".into());
        };
        if buf.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let mut dev = s
            .clone_htod(&*buf)
            .map_err(|e| format!("copy to GPU: {e}"))?;
        op(comm, &mut dev)?;
        let done = s
            .record_event(None)
            .map_err(|e| format!("record event: {e}"))?;
        let start = Instant::now();
        while !done.try_is_complete().map_err(|e| format!("{what}: {e}"))? {
            if start.elapsed() > self.timeout {
                // Dropping the communicator aborts it, which ends the kernel.
                self.comm = None;
                return Err(format!(
                    "{what} did not finish within {:.0} s: a rank is dead or stalled; the communicator is aborted",
                    self.timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        s.memcpy_dtoh(&dev, buf)
            .map_err(|e| format!("copy from GPU: {e}"))?;
        s.synchronize().map_err(|e| format!("{what}: {e}"))
    }
}

impl DeviceComm for CudaNccl {
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), String> {
        self.on_device(buf, "ncclAllReduce", |comm, dev| {
            comm.all_reduce_in_place(dev, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| format!("ncclAllReduce: {e:?}"))
        })
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), String> {
        self.on_device(buf, "ncclBroadcast", |comm, dev| {
            comm.broadcast_in_place(dev, root as i32)
                .map(|_| ())
                .map_err(|e| format!("ncclBroadcast: {e:?}"))
        })
    }
}

/// NCCL beside `ring`: rank 0 makes the id, every rank joins on its GPU 0,
/// and every wait is bounded by `timeout` (the ring's).
pub fn connect(
    ring: Box<dyn Collective>,
    timeout: Duration,
) -> Result<NcclCollective<CudaNccl>, CollectiveError> {
    NcclCollective::connect(ring, new_unique_id, |id, rank, world| {
        CudaNccl::join(id, rank, world, timeout)
    })
}
