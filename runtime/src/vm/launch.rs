//! Building and spawning `vessel-vmm` for what snapshots need: the guest and host flags of a
//! launch (shared with the pod VMs of `vmm.rs`), and the real [`SnapshotTool`]
//! (`vessel-vmm snapshot-create` / `snapshot-check`). `crate::snapshot` is the store and
//! knows no VMM command line.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vessel_protocol::vmm_launch::{GuestFlags, HostFlags, LaunchMode, VmmLaunch};
use vessel_protocol::VMM_EXIT_SNAPSHOT_REJECTED;

use crate::config::Config;
use crate::diagnostics::tail_file;
use crate::share::SHARED_FS_TAG;
use crate::snapshot::{CheckOutcome, SnapshotStore, SnapshotTool};

/// The snapshot store of `config`, making and checking snapshots with its VMM.
pub fn snapshot_store(config: &Config) -> SnapshotStore {
    SnapshotStore::new(config.snapshot.dir.clone(), Arc::new(VmmSnapshotTool))
}

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
pub struct VmmSnapshotTool;

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
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let launch = VmmLaunch {
            mode: LaunchMode::SnapshotCreate {
                dir: target.to_path_buf(),
                ready_timeout_secs: timeout.as_secs(),
            },
            guest: guest_flags(config),
            host: host_flags(
                config,
                &work.join("vsock.sock"),
                &console,
                &shared,
                &work.join("jail"),
            )
            .map_err(|e| format!("preparing the jail dir: {e}"))?,
        };
        let mut cmd = Command::new(&config.hypervisor.path);
        cmd.args(launch.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir(work);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("running {}: {e}", config.hypervisor.path.display()))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline + Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "timed out\n--- vmm log ---\n{}",
                        tail_file(&log_path, 2048)
                    ));
                }
                Err(e) => return Err(format!("waiting for the VMM: {e}")),
            }
        };
        if status.success() {
            return Ok(());
        }
        Err(format!(
            "vessel-vmm snapshot-create {status}\n--- console tail ---\n{}\n--- vmm log tail ---\n{}",
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
mod tests;
