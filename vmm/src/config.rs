//! What to boot and how: [`VmConfig`], with validation that names what is wrong.

use std::path::PathBuf;

use crate::arch::layout::MAX_VCPUS;
use crate::arch::regs::BootEntry;
use crate::cpu_policy::{HostKind, HostKindChoice};

pub const DEFAULT_KERNEL: &str = "/usr/local/share/vessel/vmlinux";
pub const DEFAULT_INITRD: &str = "/usr/local/share/vessel/initrd.cpio";
pub const DEFAULT_MEM_MIB: u32 = 128;
pub const MIN_MEM_MIB: u32 = 32;
/// Guest RAM is capped well below the host's 24 GiB.
pub const MAX_MEM_MIB: u32 = 16 * 1024;
pub const DEFAULT_VSOCK_CID: u64 = vessel_protocol::GUEST_VSOCK_CID;

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleConfig {
    #[default]
    Stdout,
    File(PathBuf),
    /// Dropped (benchmarks).
    Discard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// The guest's NIC (virtio-net). The device itself is part of what the guest sees (a snapshot
/// has it or not); the tap behind it is this VM's host side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetConfig {
    /// An fd this process inherited, open on a tap (`IFF_TAP | IFF_NO_PI`, no vnet header)
    /// in the pod's network namespace. `None`: frames from the guest are dropped.
    pub tap_fd: Option<std::os::fd::RawFd>,
}

/// A host directory shared with the guest over virtio-fs; the guest mounts it with
/// `mount -t virtiofs <tag> <dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDirConfig {
    pub tag: String,
    pub path: PathBuf,
    /// Pass extended attributes through (off by default, as in virtiofsd and Kata; see
    /// `devices/virtio/fs/backend.rs`).
    pub xattr: bool,
}

impl SharedDirConfig {
    /// Parses the CLI's `TAG=HOSTPATH` (split at the first `=`; xattrs off).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tag, path) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected TAG=HOSTPATH"))?;
        if path.is_empty() {
            return Err(format!("{s:?}: the host path is empty"));
        }
        crate::devices::virtio::fs::validate_tag(tag).map_err(|e| e.to_string())?;
        Ok(Self {
            tag: tag.to_string(),
            path: PathBuf::from(path),
            xattr: false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to the command line the VMM builds.
    pub cmdline_extra: String,
    pub mem_mib: u32,
    pub vcpus: u8,
    /// `None`: the default for the host ([`default_boot_entry`]).
    pub boot_entry: Option<BootEntry>,
    pub console: ConsoleConfig,
    /// A console file is cut back to empty (with a marker line) when it would grow past
    /// this: what a guest prints cannot fill the host's disk or tmpfs. `None`: no cap.
    pub console_max_bytes: Option<u64>,
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares, one device each, on the bus after vsock.
    pub shared_dirs: Vec<SharedDirConfig>,
    /// A NIC, on the bus after the shares.
    pub net: Option<NetConfig>,
    /// Per-thread seccomp filters (turn off only to debug).
    pub seccomp: bool,
    pub host_kind: HostKindChoice,
    /// Sample guest RIPs every 10 ms and write the histogram here at the end (debugging).
    pub rip_profile: Option<PathBuf>,
    /// Sample from this long after the start on (`--profile-rips-after`).
    pub rip_profile_after: std::time::Duration,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from(DEFAULT_KERNEL),
            initrd: Some(PathBuf::from(DEFAULT_INITRD)),
            cmdline_extra: String::new(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: 1,
            boot_entry: None,
            console: ConsoleConfig::Stdout,
            console_max_bytes: None,
            vsock: None,
            shared_dirs: Vec::new(),
            net: None,
            seccomp: true,
            host_kind: HostKindChoice::Auto,
            rip_profile: None,
            rip_profile_after: std::time::Duration::ZERO,
        }
    }
}

/// The boot entry used when none is given.
pub fn default_boot_entry(_host: HostKind) -> BootEntry {
    // Both entries work with tiny guests on either host; the 64-bit entry skips the kernel's
    // 32-bit trampoline (fewer emulated instructions on PVM), as Firecracker does.
    BootEntry::Linux64
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("guest memory of {0} MiB is too small (at least {MIN_MEM_MIB} MiB)")]
    MemoryTooSmall(u32),
    #[error("guest memory of {0} MiB is too large (at most {MAX_MEM_MIB} MiB)")]
    MemoryTooLarge(u32),
    #[error("{0} vCPUs: must be between 1 and {MAX_VCPUS}")]
    BadVcpuCount(u8),
    #[error("kernel {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("initrd {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("vsock guest CID {0} is reserved (must be at least 3 and fit in 32 bits)")]
    BadVsockCid(u64),
    #[error("vsock socket path {0} is empty or its directory does not exist")]
    BadVsockPath(PathBuf),
    #[error("shared directory tag {0:?} is invalid (1 to 36 printable ASCII characters, no spaces or '=')")]
    BadSharedDirTag(String),
    #[error("shared directory tag {0:?} is used twice")]
    DuplicateSharedDirTag(String),
    #[error("shared directory {0} does not exist or is not a directory")]
    SharedDirMissing(PathBuf),
}

impl VmConfig {
    /// A config for `kernel` with the other defaults and no initrd.
    pub fn with_kernel(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            ..Self::default()
        }
    }

    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall(self.mem_mib));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::MemoryTooLarge(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::BadVcpuCount(self.vcpus));
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid > u64::from(u32::MAX - 1) {
                return Err(ConfigError::BadVsockCid(vsock.guest_cid));
            }
            let dir_ok = vsock
                .uds_path
                .parent()
                .map(|p| p.as_os_str().is_empty() || p.is_dir())
                .unwrap_or(false);
            if vsock.uds_path.as_os_str().is_empty() || !dir_ok {
                return Err(ConfigError::BadVsockPath(vsock.uds_path.clone()));
            }
        }
        for (i, dir) in self.shared_dirs.iter().enumerate() {
            if crate::devices::virtio::fs::validate_tag(&dir.tag).is_err() {
                return Err(ConfigError::BadSharedDirTag(dir.tag.clone()));
            }
            if self.shared_dirs[..i].iter().any(|d| d.tag == dir.tag) {
                return Err(ConfigError::DuplicateSharedDirTag(dir.tag.clone()));
            }
            if !dir.path.is_dir() {
                return Err(ConfigError::SharedDirMissing(dir.path.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> (tempfile::TempDir, VmConfig) {
        let dir = tempfile::tempdir().expect("tmp");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF").expect("write");
        (dir, VmConfig::with_kernel(kernel))
    }

    #[test]
    fn defaults() {
        let c = VmConfig::default();
        assert_eq!(c.kernel, PathBuf::from(DEFAULT_KERNEL));
        assert_eq!(c.initrd, Some(PathBuf::from(DEFAULT_INITRD)));
        assert_eq!((c.mem_mib, c.vcpus, c.seccomp), (128, 1, true));
        assert_eq!(c.console, ConsoleConfig::Stdout);
        assert_eq!(c.mem_bytes(), 128 << 20);
    }

    #[test]
    fn valid_config_passes() {
        let (_d, c) = valid();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn memory_and_vcpu_bounds() {
        let (_d, mut c) = valid();
        c.mem_mib = 31;
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(31)));
        c.mem_mib = MAX_MEM_MIB + 1;
        assert_eq!(
            c.validate(),
            Err(ConfigError::MemoryTooLarge(MAX_MEM_MIB + 1))
        );
        c.mem_mib = 32;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadVcpuCount(0)));
        c.vcpus = MAX_VCPUS + 1;
        assert_eq!(c.validate(), Err(ConfigError::BadVcpuCount(MAX_VCPUS + 1)));
        c.vcpus = MAX_VCPUS;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn missing_files_are_named() {
        let (d, mut c) = valid();
        c.initrd = Some(d.path().join("nope.cpio"));
        assert_eq!(
            c.validate(),
            Err(ConfigError::InitrdMissing(d.path().join("nope.cpio")))
        );
        c.kernel = d.path().join("missing");
        assert_eq!(
            c.validate(),
            Err(ConfigError::KernelMissing(d.path().join("missing")))
        );
    }

    #[test]
    fn shared_dir_checks() {
        let (d, mut c) = valid();
        let dir = |tag: &str, path: PathBuf| SharedDirConfig {
            tag: tag.to_string(),
            path,
            xattr: false,
        };
        c.shared_dirs = vec![dir("vessel", d.path().to_path_buf())];
        assert_eq!(c.validate(), Ok(()));
        c.shared_dirs = vec![dir("bad tag", d.path().to_path_buf())];
        assert_eq!(
            c.validate(),
            Err(ConfigError::BadSharedDirTag("bad tag".into()))
        );
        c.shared_dirs = vec![dir("a", d.path().to_path_buf()), dir("a", d.path().into())];
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateSharedDirTag("a".into()))
        );
        c.shared_dirs = vec![dir("a", d.path().join("vmlinux"))];
        assert_eq!(
            c.validate(),
            Err(ConfigError::SharedDirMissing(d.path().join("vmlinux")))
        );
    }

    #[test]
    fn shared_dir_parsing() {
        let s = SharedDirConfig::parse("vessel=/run/vessel/x/shared").unwrap();
        assert_eq!(
            (s.tag.as_str(), s.path.as_path(), s.xattr),
            (
                "vessel",
                std::path::Path::new("/run/vessel/x/shared"),
                false
            )
        );
        // Split at the first '=': paths may contain '='.
        let s = SharedDirConfig::parse("t=/a=b").unwrap();
        assert_eq!(s.path, PathBuf::from("/a=b"));
        for bad in ["", "noequals", "=/path", "tag=", "bad tag=/p"] {
            assert!(SharedDirConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vsock_checks() {
        let (d, mut c) = valid();
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: d.path().join("v.sock"),
        });
        assert_eq!(c.validate(), Err(ConfigError::BadVsockCid(2)));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: d.path().join("no/dir/v.sock"),
        });
        assert!(matches!(c.validate(), Err(ConfigError::BadVsockPath(_))));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: d.path().join("v.sock"),
        });
        assert_eq!(c.validate(), Ok(()));
    }
}
