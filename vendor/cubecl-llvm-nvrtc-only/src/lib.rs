//! The items of cubecl-llvm 0.11.3 that cubecl-cuda names, without LLVM.
//!
//! cubecl-cuda always compiles both of its kernel compilers and picks one at
//! run time: CUDA C++ through NVRTC when its `cpp` feature is on (lorafleet
//! turns it on), LLVM otherwise. Linking the LLVM one means a static LLVM
//! that the real crate's build script downloads, which an offline build
//! cannot do. This crate keeps the names and types cubecl-cuda refers to;
//! [`PlironCompiler`] refuses every kernel with an error that says why, and
//! [`shared::lowered_features::restrict_features`] (only called when the
//! LLVM backend is selected) leaves the properties alone.
//!
//! Not here: any code generation. With the `cpp` feature on, cubecl-cuda
//! never calls into this crate at run time except for
//! [`nvptx::ptx_version::PtxVersion::for_driver`] (a table lookup, kept
//! as the original).

use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_runtime::compiler::{CompilationError, Compiler};
use cubecl_runtime::kernel::BufferIOAttr;

pub mod nvptx {
    //! The NVPTX target's version table.
    pub mod ptx_version {
        //! The PTX ISA version emitted for the installed driver (as in cubecl-llvm).
        use core::fmt;

        /// A PTX ISA version, as the NVPTX target feature spells it: 8.7 is `87`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The newest version a driver of CUDA `driver` loads (12.8 is `12080`);
            /// `None` below CUDA 10.0.
            pub fn for_driver(driver: i32) -> Option<Self> {
                DRIVER_PTX
                    .iter()
                    .find(|(first_driver, _)| driver >= *first_driver)
                    .map(|(_, ptx)| Self(*ptx))
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }

        /// The first CUDA release to load each PTX version, newest first.
        const DRIVER_PTX: &[(i32, u32)] = &[
            (13030, 93),
            (13020, 92),
            (13010, 91),
            (13000, 90),
            (12090, 88),
            (12080, 87),
            (12050, 85),
            (12040, 84),
            (12030, 83),
            (12020, 82),
            (12010, 81),
            (12000, 80),
            (11080, 78),
            (11070, 77),
            (11060, 76),
            (11050, 75),
            (11040, 74),
            (11030, 73),
            (11020, 72),
            (11010, 71),
            (11000, 70),
            (10020, 65),
            (10010, 64),
            (10000, 63),
        ];
    }
}

pub mod shared {
    //! What the LLVM backend shares between targets: here only the feature filter.
    pub mod lowered_features {
        //! Device properties narrowed to what the LLVM backend lowers: with no
        //! LLVM backend there is nothing to narrow for.
        use cubecl_core::ir::DeviceProperties;

        /// The GPU targets of the LLVM backend.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            Nvptx,
        }

        /// Leaves `props` as they are: the LLVM backend is never selected in
        /// this build (cubecl-cuda calls this only when it is).
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

/// Where the LLVM backend would compile to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    Nvptx,
}

/// Options of the LLVM backend (read by nothing here).
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    pub arch: Option<()>,
    pub sm_arch: Option<SmArch>,
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    pub grid_constants: bool,
}

/// PTX the LLVM backend would have produced; never made here.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX assembly.
    pub ptx: Vec<core::ffi::c_char>,
    /// Kernel entry point symbol.
    pub entrypoint: String,
    /// IR for logging and cache keys.
    pub ir: String,
    /// Shared memory required per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<BufferIOAttr>,
}

/// What the LLVM backend would have produced.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
    /// The CPU target's artifact in the real crate; never made here.
    Unavailable,
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
            PlironArtifact::Unavailable => f.write_str(NO_LLVM),
        }
    }
}

/// The LLVM backend's compiler: refuses every kernel.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

/// Why [`PlironCompiler`] refuses a kernel.
pub const NO_LLVM: &str = "this build has no LLVM kernel compiler (cubecl-llvm is replaced by \
     lorafleet's stand-in); kernels compile with NVRTC through cubecl-cuda's `cpp` feature";

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
        match repr {
            PlironArtifact::NvptxCode(module) => Some(module.io.clone()),
            PlironArtifact::Unavailable => None,
        }
    }

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: NO_LLVM.to_string(),
            backtrace: cubecl_core::environment::backtrace::BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}
