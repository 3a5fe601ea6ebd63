//! Choosing the compute device and its thread count.
//!
//! The CPU backend (burn's `flex`) runs its kernels on rayon's global pool;
//! [`set_cpu_threads`] sizes that pool once, before the first tensor op.
//! Backends are cargo features: `flex` (default), `cuda`.

use burn::tensor::Device;

/// The device of the backend this build was made for.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(all(feature = "flex", not(feature = "cuda")))]
    {
        Device::flex()
    }
    // Built without a backend feature (e.g. as a dependency that only needs
    // the types): burn's default panics with guidance if it is ever used.
    #[cfg(not(any(feature = "flex", feature = "cuda")))]
    {
        Device::default()
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
