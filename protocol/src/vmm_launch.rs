//! How the runtime starts `vessel-vmm`: one typed description of a launch, turned into the
//! VMM's command line in one place. `vessel-vmm`'s own argument parser reads it back in a
//! round-trip test (`vmm/src/main.rs`), so the two cannot drift apart.

use std::ffi::OsString;
use std::path::PathBuf;

/// The line the host writes on `vessel-vmm snapshot-create`'s stdin when the guest is ready
/// (its agent answered `Check`): the VMM pauses the VM and writes the snapshot. End of file
/// before it stops the VM without a snapshot.
pub const SNAPSHOT_NOW: &str = "snapshot";

/// What the VMM process is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchMode {
    /// Boot the kernel.
    Boot,
    /// Restore the snapshot in this directory (the guest flags must match it).
    Restore(PathBuf),
    /// Boot, wait until the host writes [`SNAPSHOT_NOW`] on the VMM's stdin (after it saw
    /// the agent answer `Check`: see `agent_check`), save a snapshot into `dir`, exit.
    SnapshotCreate { dir: PathBuf },
    /// Check, without starting a VM, that the snapshot in `dir` can be restored with the
    /// guest flags (exit 0, or [`crate::VMM_EXIT_SNAPSHOT_REJECTED`]).
    SnapshotCheck { dir: PathBuf },
}

/// What the guest is booted from: a restore must be given the same (the VMM checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFlags {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the command line the VMM builds.
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u8,
    /// A virtio-net NIC (part of what the guest sees, so of a snapshot too).
    pub net: bool,
}

/// The tap behind `--net-tap-fd`, as the runtime makes it and the VMM checks it: its
/// `TUNSETIFF` flags include `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (Ethernet frames, no
/// packet information, each frame behind a `virtio_net_hdr`, which the VMM sets to 12 bytes
/// and uses for the checksum and segmentation offloads).
pub mod tap_flags {
    pub const IFF_TAP: u16 = 0x0002;
    pub const IFF_NO_PI: u16 = 0x1000;
    pub const IFF_VNET_HDR: u16 = 0x4000;
    /// What `--net-tap-fd` must be open on.
    pub const REQUIRED: u16 = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
}

/// This VM's host side: its sockets, console, shared directories and confinement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFlags {
    /// The hybrid vsock's Unix socket.
    pub vsock_uds: Option<PathBuf>,
    pub console: Option<PathBuf>,
    pub console_max_bytes: Option<u64>,
    /// virtio-fs shares: (tag, host directory).
    pub shared_dirs: Vec<(String, PathBuf)>,
    /// Run without seccomp filters (debugging only).
    pub no_seccomp: bool,
    /// Run jailed on this empty directory.
    pub jail: Option<PathBuf>,
    /// The NIC's host end: an inherited fd open on a tap.
    pub net_tap_fd: Option<i32>,
    /// An inherited fd open on the file the VMM rewrites its counters in
    /// (`crate::vmm_metrics`).
    pub metrics_fd: Option<i32>,
    /// How the VMM writes its log lines (`--log-format`, left out for text).
    pub log_format: crate::log_format::LogFormat,
    /// The sandbox the VMM runs, named in its JSON log lines (`--log-sandbox`).
    pub log_sandbox: Option<String>,
}

/// One `vessel-vmm` launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmLaunch {
    pub mode: LaunchMode,
    pub guest: GuestFlags,
    pub host: HostFlags,
}

impl VmmLaunch {
    /// The command line, without the program: mode, guest flags, host flags.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        match &self.mode {
            LaunchMode::Boot => {}
            LaunchMode::Restore(dir) => {
                a.push("--restore".into());
                a.push(dir.into());
            }
            LaunchMode::SnapshotCreate { dir } => {
                a.push("snapshot-create".into());
                a.push("--snapshot-dir".into());
                a.push(dir.into());
            }
            LaunchMode::SnapshotCheck { dir } => {
                a.push("snapshot-check".into());
                a.push("--snapshot-dir".into());
                a.push(dir.into());
            }
        }
        let g = &self.guest;
        a.push("--kernel".into());
        a.push(g.kernel.clone().into());
        a.push("--initrd".into());
        a.push(g.initrd.clone().into());
        a.push("--cmdline".into());
        a.push(g.cmdline.clone().into());
        a.push("--mem-mib".into());
        a.push(g.mem_mib.to_string().into());
        a.push("--vcpus".into());
        a.push(g.vcpus.to_string().into());
        if g.net {
            a.push("--net".into());
        }
        let h = &self.host;
        if let Some(p) = &h.vsock_uds {
            a.push("--vsock-uds".into());
            a.push(p.into());
        }
        if let Some(p) = &h.console {
            a.push("--console".into());
            a.push(p.into());
        }
        if let Some(n) = h.console_max_bytes {
            a.push("--console-max-bytes".into());
            a.push(n.to_string().into());
        }
        for (tag, dir) in &h.shared_dirs {
            let mut v = OsString::from(format!("{tag}="));
            v.push(dir);
            a.push("--shared-dir".into());
            a.push(v);
        }
        if h.no_seccomp {
            a.push("--no-seccomp".into());
        }
        if let Some(p) = &h.jail {
            a.push("--jail".into());
            a.push(p.into());
        }
        if let Some(fd) = h.net_tap_fd {
            a.push("--net-tap-fd".into());
            a.push(fd.to_string().into());
        }
        if let Some(fd) = h.metrics_fd {
            a.push("--metrics-fd".into());
            a.push(fd.to_string().into());
        }
        if h.log_format != crate::log_format::LogFormat::Text {
            a.push("--log-format".into());
            a.push(h.log_format.as_str().into());
        }
        if let Some(id) = &h.log_sandbox {
            a.push("--log-sandbox".into());
            a.push(id.into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_names_the_snapshot_before_the_flags() {
        let launch = VmmLaunch {
            mode: LaunchMode::Restore("/s/snap".into()),
            guest: GuestFlags {
                kernel: "/k/vmlinux".into(),
                initrd: "/k/initrd".into(),
                cmdline: "quiet".into(),
                mem_mib: 128,
                vcpus: 1,
                net: true,
            },
            host: HostFlags {
                vsock_uds: Some("/r/v.sock".into()),
                shared_dirs: vec![("vessel".into(), "/r/shared".into())],
                jail: Some("/r/jail".into()),
                ..HostFlags::default()
            },
        };
        let args: Vec<String> = launch
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--restore",
                "/s/snap",
                "--kernel",
                "/k/vmlinux",
                "--initrd",
                "/k/initrd",
                "--cmdline",
                "quiet",
                "--mem-mib",
                "128",
                "--vcpus",
                "1",
                "--net",
                "--vsock-uds",
                "/r/v.sock",
                "--shared-dir",
                "vessel=/r/shared",
                "--jail",
                "/r/jail"
            ]
        );
    }
}
