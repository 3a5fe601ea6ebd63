//! What a worker advertises when it registers: the tensor backend of this
//! build, the device it trains on, and that device's memory.
//!
//! A CPU build advertises `cpu` and the host's memory. A `cuda` build
//! advertises `cuda`, GPU 0 of those `CUDA_VISIBLE_DEVICES` shows (name,
//! memory, and how many are visible) and that GPU's memory: one worker per
//! GPU, as NCCL takes one rank per GPU. The coordinator places a job only
//! on workers of its `resources.backend`. Not here: registering (`agent`).

/// A worker's registration fields about its hardware.
#[derive(Debug, Clone, PartialEq)]
pub struct Advertised {
    pub backend: String,
    pub device: String,
    pub memory_bytes: u64,
}

/// What this build and host advertise for `backend` (default: the
/// build's, `trainer::device::ComputeBackend::of_build`); `host_memory` is
/// the host's RAM.
pub fn advertised(backend: Option<&str>, host_memory: u64) -> anyhow::Result<Advertised> {
    let cpu = Advertised {
        backend: "cpu".into(),
        device: "cpu".into(),
        memory_bytes: host_memory,
    };
    match backend.unwrap_or(trainer::device::ComputeBackend::of_build().name()) {
        "cpu" => Ok(cpu),
        "cuda" => cuda(),
        other => anyhow::bail!("--backend {other}: this worker offers cpu or cuda"),
    }
}

/// GPU 0 of the visible ones, or why there is none.
fn cuda() -> anyhow::Result<Advertised> {
    #[cfg(feature = "cuda")]
    {
        let gpus = trainer::device::cuda::gpus()?;
        let Some(gpu) = gpus.first() else {
            anyhow::bail!("a cuda worker needs a GPU, and the driver shows none");
        };
        if gpus.len() > 1 {
            eprintln!(
                "{} GPUs are visible; this worker trains on the first ({}). Start one worker per GPU with CUDA_VISIBLE_DEVICES=0, 1, ...",
                gpus.len(),
                gpu.name
            );
        }
        Ok(cuda_advertised(gpu, gpus.len()))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(trainer::device::DeviceError::NotBuilt { backend: "cuda" }.into())
    }
}

/// A `cuda` worker's fields for `gpu`, one of `visible` GPUs.
#[cfg(feature = "cuda")]
fn cuda_advertised(gpu: &trainer::device::cuda::GpuInfo, visible: usize) -> Advertised {
    Advertised {
        backend: "cuda".into(),
        device: format!(
            "cuda:{} {} ({:.0} GiB; {visible} GPU{} visible)",
            gpu.ordinal,
            gpu.name,
            gpu.memory_bytes as f64 / (1u64 << 30) as f64,
            if visible == 1 { "" } else { "s" }
        ),
        memory_bytes: gpu.memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_advertises_the_cpu_and_the_hosts_memory() {
        let a = advertised(None, 64 << 30).unwrap();
        assert_eq!(
            a,
            Advertised {
                backend: "cpu".into(),
                device: "cpu".into(),
                memory_bytes: 64 << 30
            }
        );
        // The coordinator knows the name.
        assert!(job::spec::Backend::parse(&a.backend).is_some());
        assert_eq!(advertised(Some("cpu"), 1).unwrap().memory_bytes, 1);
        let no_gpu = advertised(Some("cuda"), 1).unwrap_err().to_string();
        assert!(no_gpu.contains("--features cuda"), "{no_gpu}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn a_cuda_worker_names_its_gpu_its_memory_and_how_many_are_visible() {
        let gpu = trainer::device::cuda::GpuInfo {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            memory_bytes: 150_000_000_000,
        };
        let a = cuda_advertised(&gpu, 8);
        assert_eq!(a.backend, "cuda");
        assert_eq!(a.device, "cuda:0 NVIDIA H200 (140 GiB; 8 GPUs visible)");
        assert_eq!(a.memory_bytes, 150_000_000_000);
        assert!(job::spec::Backend::parse(&a.backend).is_some());
    }
}
