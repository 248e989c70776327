//! vessel's micro-VM monitor: KVM, guest memory, direct Linux boot, virtio-mmio devices.
//!
//! In-process use:
//! ```no_run
//! use vessel_vmm::{Vm, VmConfig};
//! let mut config = VmConfig::with_kernel("/usr/local/share/vessel/vmlinux");
//! config.mem_mib = 256;
//! let vm = Vm::start(config)?;
//! let reason = vm.wait();
//! println!("exit code {}", reason.exit_code());
//! # Ok::<(), vessel_vmm::VmmError>(())
//! ```

pub mod arch;
pub mod boot;
pub mod config;
pub mod console;
pub mod cpu_policy;
pub mod devices;
pub mod error;
pub mod exit;
/// Entry points of the fuzz targets in `fuzz/` (tests and the `fuzzing` feature only).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_api;
pub mod jail;
pub mod kvm;
pub mod log_limit;
pub mod metrics_file;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod vmm;

pub use arch::regs::BootEntry;
pub use config::{ConsoleConfig, SharedDirConfig, VmConfig, VsockConfig};
pub use cpu_policy::{HostKind, HostKindChoice};
pub use error::VmmError;
pub use exit::ExitReason;
pub use vmm::{RunningVm, VirtioDeviceHandle, Vm, VmInfo, VmStopper};
