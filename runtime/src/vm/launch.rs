//! Building and spawning `vessel-vmm` for what snapshots need: the guest and host flags of a
//! launch (shared with the pod VMs of `vmm.rs`), and the real [`SnapshotTool`]
//! (`vessel-vmm snapshot-create` / `snapshot-check`). `crate::snapshot` is the store and
//! knows no VMM command line.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vessel_protocol::agent_check::{self, AgentReady, ReadyError};
use vessel_protocol::errors::chain;
use vessel_protocol::vmm_launch::{GuestFlags, HostFlags, LaunchMode, VmmLaunch};
use vessel_protocol::VMM_EXIT_SNAPSHOT_REJECTED;

use crate::config::Config;
use crate::diagnostics::tail_file;
use crate::share::SHARED_FS_TAG;
use crate::snapshot::{CheckOutcome, SnapshotStore, SnapshotTool};

/// How long `vessel-vmm snapshot-create` may take to write the snapshot once told, beyond
/// the deadline for the guest to get ready.
const SNAPSHOT_WRITE_GRACE: Duration = Duration::from_secs(60);

/// The snapshot store of `config`, making and checking snapshots with its VMM.
pub fn snapshot_store(config: &Config) -> SnapshotStore {
    snapshot_store_with(config, VmmSnapshotTool::default())
}

/// The snapshot store of `config`, making snapshots with `tool`.
pub fn snapshot_store_with(config: &Config, tool: VmmSnapshotTool) -> SnapshotStore {
    SnapshotStore::new(config.snapshot.dir.clone(), Arc::new(tool))
}

/// How the runtime sees a `vessel-vmm snapshot-create`'s guest get ready and tells the VMM to
/// snapshot (arguments: the child, its vsock socket, the deadline, the write grace). The real
/// one is [`agent_check::snapshot_when_ready`]: the agent answers `Check`.
pub type SnapshotDriver =
    fn(&mut Child, &Path, Instant, Duration) -> Result<(AgentReady, ExitStatus), ReadyError>;

/// Guest-side flags: what the VM is booted from (and what a restore must match).
pub fn guest_flags(config: &Config) -> GuestFlags {
    let h = &config.hypervisor;
    let mut cmdline = h.kernel_params.clone();
    if config.snapshot.enabled {
        // The agent warms up before the snapshot is taken; on a restore the kernel command
        // line is not read again, but it must match the snapshot's.
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&format!("{}=1", vessel_protocol::WARMUP_CMDLINE_PARAM));
    }
    GuestFlags {
        kernel: h.kernel.clone(),
        initrd: h.initrd.clone(),
        cmdline,
        mem_mib: h.memory_mib,
        // The config keeps vcpus within 1..=254.
        vcpus: u8::try_from(h.vcpus).unwrap_or(u8::MAX),
        // Every VM has its NIC (snapshots too): pods with a network attach a tap to it.
        net: true,
    }
}

/// Host-side flags: the VM's sockets, console and shared directory, and the empty directory
/// its jail is built on (used when `hypervisor.jail`; created here).
pub fn host_flags(
    config: &Config,
    vsock: &Path,
    console: &Path,
    shared: &Path,
    jail: &Path,
) -> std::io::Result<HostFlags> {
    let mut flags = HostFlags {
        vsock_uds: Some(vsock.to_path_buf()),
        console: Some(console.to_path_buf()),
        console_max_bytes: Some(config.runtime.console_log_max_bytes),
        shared_dirs: vec![(SHARED_FS_TAG.to_string(), shared.to_path_buf())],
        no_seccomp: !config.hypervisor.seccomp,
        log_format: config.log_format(),
        ..HostFlags::default()
    };
    if config.hypervisor.jail {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(jail)?;
        flags.jail = Some(jail.to_path_buf());
    }
    Ok(flags)
}

/// The real tool: `vessel-vmm snapshot-create` and `vessel-vmm snapshot-check`.
#[derive(Debug, Clone, Copy)]
pub struct VmmSnapshotTool {
    drive: SnapshotDriver,
}

impl Default for VmmSnapshotTool {
    fn default() -> Self {
        VmmSnapshotTool {
            drive: agent_check::snapshot_when_ready,
        }
    }
}

impl VmmSnapshotTool {
    /// A tool that learns readiness from `drive` instead (unit tests, where a script stands
    /// in for the VMM and no agent answers).
    pub fn with_driver(drive: SnapshotDriver) -> Self {
        VmmSnapshotTool { drive }
    }
}

impl SnapshotTool for VmmSnapshotTool {
    fn create(
        &self,
        config: &Config,
        work: &Path,
        target: &Path,
        deadline: Instant,
    ) -> Result<(), String> {
        let shared = work.join("shared");
        std::fs::create_dir_all(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
        let log_path = work.join("vmm.log");
        let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let console = work.join("console.log");
        let uds = work.join("vsock.sock");
        let launch = VmmLaunch {
            mode: LaunchMode::SnapshotCreate {
                dir: target.to_path_buf(),
            },
            guest: guest_flags(config),
            host: host_flags(config, &uds, &console, &shared, &work.join("jail"))
                .map_err(|e| format!("preparing the jail dir: {e}"))?,
        };
        let mut cmd = Command::new(&config.hypervisor.path);
        cmd.args(launch.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir(work);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("running {}: {e}", config.hypervisor.path.display()))?;
        // The runtime, not the VMM, decides the guest is ready: its agent answers Check. That
        // connection stays open until the snapshot is written (restored VMs' first client
        // takes it over).
        let result = (self.drive)(&mut child, &uds, deadline, SNAPSHOT_WRITE_GRACE);
        let failure = match result {
            Ok((ready, status)) if status.success() => {
                log::info!(
                    "snapshot {}: agent {} answered after {:?} (guest uptime {} ms)",
                    target.display(),
                    ready.version,
                    ready.waited,
                    ready.guest_uptime_ms
                );
                return Ok(());
            }
            Ok((_, status)) => format!("vessel-vmm snapshot-create {status}"),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                chain(&e)
            }
        };
        Err(format!(
            "{failure}\n--- console tail ---\n{}\n--- vmm log tail ---\n{}",
            tail_file(&console, 2048).trim_end(),
            tail_file(&log_path, 2048).trim_end()
        ))
    }

    fn check(&self, config: &Config, dir: &Path) -> Result<CheckOutcome, String> {
        let launch = VmmLaunch {
            mode: LaunchMode::SnapshotCheck {
                dir: dir.to_path_buf(),
            },
            guest: guest_flags(config),
            host: HostFlags::default(),
        };
        let out = Command::new(&config.hypervisor.path)
            .args(launch.to_args())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", config.hypervisor.path.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(1024)
            .collect();
        match out.status.code() {
            Some(0) => Ok(CheckOutcome::Usable),
            Some(c) if c == i32::from(VMM_EXIT_SNAPSHOT_REJECTED) => {
                Ok(CheckOutcome::Rejected(last))
            }
            _ => Err(format!("vessel-vmm snapshot-check {}: {last}", out.status)),
        }
    }
}

#[cfg(test)]
#[path = "launch_tests.rs"]
pub(crate) mod tests;
