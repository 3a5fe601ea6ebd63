//! Choosing the compute device, the precision of frozen weights, and the
//! CPU thread count.
//!
//! A job names its backend ([`ComputeBackend`]: `cpu` or `cuda`);
//! [`device_for`] turns that into a burn [`Device`], or says that this
//! build lacks it. Backends are cargo features: `flex` (the CPU backend,
//! default), `cuda` (burn-cuda on GPU 0 of those `CUDA_VISIBLE_DEVICES`
//! shows: one process per GPU). The CPU backend runs its kernels on
//! rayon's global pool; [`set_cpu_threads`] sizes that pool once, before
//! the first tensor op.
//!
//! On an accelerator the frozen base weights are kept in bf16
//! ([`frozen_dtype`]) while activations, LoRA weights and the optimizer
//! stay f32; on the CPU everything is f32 unless a job asks for 16-bit
//! base weights ([`FrozenDType`], `model.dtype`, [`frozen_dtype_or`]).
//! Not here: what runs on the device (`model`, `train`), or GPU
//! collectives (`collective::nccl`).

#[cfg(feature = "cuda")]
pub mod cuda;

use burn::tensor::{Device, FloatDType};

/// The tensor backend a job asks for (`resources.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeBackend {
    Cpu,
    Cuda,
}

impl ComputeBackend {
    pub fn name(self) -> &'static str {
        match self {
            ComputeBackend::Cpu => "cpu",
            ComputeBackend::Cuda => "cuda",
        }
    }

    /// The accelerator backend this build was made with, `Cpu` without one:
    /// what a worker of this build advertises.
    pub fn of_build() -> ComputeBackend {
        if cfg!(feature = "cuda") {
            ComputeBackend::Cuda
        } else {
            ComputeBackend::Cpu
        }
    }
}

/// A backend this build cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "backend {backend} is not in this build; build lorafleet with `--features {backend}` (docs/GPU.md)"
    )]
    NotBuilt { backend: &'static str },
    #[error("backend cuda: {0}")]
    Cuda(String),
}

/// The device of `backend` (GPU 0 of the visible ones for `cuda`).
pub fn device_for(backend: ComputeBackend) -> Result<Device, DeviceError> {
    match backend {
        ComputeBackend::Cpu => Ok(cpu_device()),
        #[cfg(feature = "cuda")]
        ComputeBackend::Cuda => {
            cuda::check_driver()?;
            Ok(Device::cuda(0))
        }
        #[cfg(not(feature = "cuda"))]
        ComputeBackend::Cuda => Err(DeviceError::NotBuilt { backend: "cuda" }),
    }
}

/// The device of the backend this build was made for (the GPU in a `cuda`
/// build): what `generate`, `bench` and `export` run on.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        cpu_device()
    }
}

/// The CPU backend's device.
fn cpu_device() -> Device {
    #[cfg(feature = "flex")]
    {
        Device::flex()
    }
    // Built without a backend feature (e.g. as a dependency that only needs
    // the types): burn's default panics with guidance if it is ever used.
    #[cfg(not(feature = "flex"))]
    {
        Device::default()
    }
}

/// Whether `device` is an accelerator rather than the CPU backend.
pub fn is_accelerator(device: &Device) -> bool {
    cfg!(feature = "cuda") && device.clone().inner() != cpu_device()
}

/// The environment variable that overrides [`frozen_dtype`] on an
/// accelerator: `bf16` (the default), `f16` or `f32`.
pub const FROZEN_DTYPE_ENV: &str = "LORAFLEET_FROZEN_DTYPE";

/// The precision the frozen base weights are kept in on `device`: f32 on
/// the CPU; bf16 on an accelerator that computes in it (f16 or f32 when
/// [`FROZEN_DTYPE_ENV`] says so). Products with them run in that type and
/// their results come back as f32.
pub fn frozen_dtype(device: &Device) -> FloatDType {
    if !is_accelerator(device) {
        return FloatDType::F32;
    }
    let wanted = match std::env::var(FROZEN_DTYPE_ENV).as_deref() {
        Ok("f32") => FloatDType::F32,
        Ok("f16") => FloatDType::F16,
        _ => FloatDType::BF16,
    };
    if device.supports_dtype(wanted) {
        wanted
    } else {
        FloatDType::F32
    }
}

/// The precision frozen base weights are asked to be kept in
/// (`model.dtype`, `bench train --dtype`). Matrices only: norm weights,
/// activations, LoRA weights, their gradients and the optimizer stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrozenDType {
    F32,
    Bf16,
    F16,
}

impl FrozenDType {
    /// Every value, in the order the docs list them.
    pub const ALL: [FrozenDType; 3] = [FrozenDType::F32, FrozenDType::Bf16, FrozenDType::F16];

    /// The spelling in job specs and flags: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            FrozenDType::F32 => "f32",
            FrozenDType::Bf16 => "bf16",
            FrozenDType::F16 => "f16",
        }
    }

    /// The value spelled `text` ([`Self::name`]), if any.
    pub fn parse(text: &str) -> Option<FrozenDType> {
        Self::ALL.into_iter().find(|d| d.name() == text)
    }

    /// Whether values are kept in 16 bits.
    pub fn is_half(self) -> bool {
        self != FrozenDType::F32
    }

    pub fn float_dtype(self) -> FloatDType {
        match self {
            FrozenDType::F32 => FloatDType::F32,
            FrozenDType::Bf16 => FloatDType::BF16,
            FrozenDType::F16 => FloatDType::F16,
        }
    }
}

impl std::fmt::Display for FrozenDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision frozen matrices are kept in on `device`: `wanted` when
/// given and the device supports it (f32 otherwise), else
/// [`frozen_dtype`]'s default for the device.
pub fn frozen_dtype_or(device: &Device, wanted: Option<FrozenDType>) -> FloatDType {
    match wanted {
        None => frozen_dtype(device),
        Some(wanted) if device.supports_dtype(wanted.float_dtype()) => wanted.float_dtype(),
        Some(_) => FloatDType::F32,
    }
}

/// Sizes the CPU thread pool. Only the first call takes effect; returns
/// whether this one did.
pub fn set_cpu_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .is_ok()
}

/// Threads the CPU pool runs on.
pub fn cpu_threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_backend_keeps_frozen_weights_in_f32() {
        let device = device_for(ComputeBackend::Cpu).unwrap();
        assert!(!is_accelerator(&device));
        assert!(!is_accelerator(&device.clone().autodiff()));
        assert_eq!(frozen_dtype(&device), FloatDType::F32);
    }

    #[test]
    fn an_explicit_frozen_dtype_wins_on_the_cpu() {
        let device = device_for(ComputeBackend::Cpu).unwrap();
        assert_eq!(frozen_dtype_or(&device, None), FloatDType::F32);
        for d in FrozenDType::ALL {
            assert_eq!(frozen_dtype_or(&device, Some(d)), d.float_dtype());
            assert_eq!(FrozenDType::parse(d.name()), Some(d));
        }
        assert_eq!(FrozenDType::parse("fp16"), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_how_to_get_it() {
        let err = device_for(ComputeBackend::Cuda).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
        assert_eq!(ComputeBackend::of_build(), ComputeBackend::Cpu);
    }
}
