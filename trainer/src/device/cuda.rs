//! What a `cuda` build finds on its host: the driver and the visible GPUs.
//!
//! cudarc opens libcuda with dlopen at run time (nothing CUDA is linked),
//! so a `cuda` binary starts on any host and says here, as an error, what
//! is missing. Not here: kernels (burn-cuda compiles them with NVRTC) and
//! NCCL (`collective::nccl`).

use cudarc::driver::CudaContext;

use super::DeviceError;

/// One visible GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: u64,
}

/// Fails unless libcuda loads and shows at least one GPU.
pub fn check_driver() -> Result<(), DeviceError> {
    if gpus()?.is_empty() {
        return Err(DeviceError::Cuda(
            "the driver shows no GPU (is CUDA_VISIBLE_DEVICES empty?)".into(),
        ));
    }
    Ok(())
}

/// Every GPU `CUDA_VISIBLE_DEVICES` lets this process see.
pub fn gpus() -> Result<Vec<GpuInfo>, DeviceError> {
    // SAFETY: only asks whether the library loads; nothing is called yet.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::Cuda(
            "cannot load libcuda.so (the NVIDIA driver); is it installed and on the library path?"
                .into(),
        ));
    }
    let count = CudaContext::device_count().map_err(|e| DeviceError::Cuda(e.to_string()))?;
    (0..count.max(0) as usize)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| DeviceError::Cuda(format!("GPU {ordinal}: {e}")))?;
            let name = ctx.name().map_err(|e| DeviceError::Cuda(e.to_string()))?;
            let memory_bytes =
                ctx.total_mem()
                    .map_err(|e| DeviceError::Cuda(e.to_string()))? as u64;
            Ok(GpuInfo {
                ordinal,
                name,
                memory_bytes,
            })
        })
        .collect()
}
