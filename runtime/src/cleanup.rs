//! Releasing everything a sandbox left on the host, from its state file and the mount table:
//! used by a normal stop, after a failed start, and by `containerd-shim-vessel-v2 delete` /
//! `vessel cleanup` after the shim that owned the sandbox died.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::mounts::{MountError, Mounter};
use crate::state::{SandboxPaths, SandboxStateFile, StateError};

/// Cleanup could not release everything.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("sandbox dir {dir}: VMM pid {pid} still alive {waited:?} after SIGKILL")]
    VmmAlive {
        dir: PathBuf,
        pid: i32,
        waited: Duration,
    },
    #[error("sandbox dir {dir}")]
    Mount { dir: PathBuf, source: MountError },
    #[error("sandbox dir {dir}: still mounted after unmount: {left:?}; not removing it")]
    StillMounted { dir: PathBuf, left: Vec<PathBuf> },
    #[error("sandbox dir {dir}: undoing the pod's network wiring")]
    Network {
        dir: PathBuf,
        #[source]
        source: crate::network::NetworkError,
    },
    #[error("sandbox dir {dir}: removing the pod's cgroup")]
    Cgroup {
        dir: PathBuf,
        #[source]
        source: crate::host_cgroup::HostCgroupError,
    },
    #[error("removing sandbox dir {dir}")]
    Remove {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// What cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub existed: bool,
    pub killed_vmm: bool,
    pub unmounted: usize,
    pub state_error: Option<String>,
}

/// Kills the sandbox's VMM if it is still that process, unmounts everything under the
/// sandbox dir and removes the dir. Idempotent; a missing dir is not an error.
pub fn cleanup_sandbox_dir(
    paths: &SandboxPaths,
    mounter: &dyn Mounter,
    wait: Duration,
) -> Result<CleanupReport, CleanupError> {
    let dir = paths.dir().to_path_buf();
    let mut report = CleanupReport {
        existed: dir.exists(),
        ..Default::default()
    };
    if !report.existed {
        return Ok(report);
    }
    let state = match SandboxStateFile::read(&paths.state_file()) {
        Ok(s) => s,
        // Still clean up what the mount table shows; just no VMM pid to kill.
        Err(
            e @ (StateError::Corrupt { .. }
            | StateError::Io { .. }
            | StateError::InvalidId { .. }
            | StateError::PathTooLong { .. }),
        ) => {
            report.state_error = Some(vessel_protocol::errors::chain(&e));
            None
        }
    };
    if let Some(vmm) = state.as_ref().and_then(|s| s.vmm) {
        if vmm.is_alive() {
            log::info!(
                "sandbox dir {}: killing leftover VMM pid {}",
                dir.display(),
                vmm.pid
            );
            let _ = kill(Pid::from_raw(vmm.pid), Signal::SIGKILL);
            report.killed_vmm = true;
            let deadline = Instant::now() + wait;
            while vmm.is_alive() {
                if Instant::now() >= deadline {
                    return Err(CleanupError::VmmAlive {
                        dir,
                        pid: vmm.pid,
                        waited: wait,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let merr = |dir: &PathBuf| {
        let dir = dir.clone();
        move |source| CleanupError::Mount { dir, source }
    };
    // What it recorded, by mount id wherever the guest moved it; then anything else the
    // mount table shows beneath the dir. Each through an fd checked to be that mount.
    if let Some(s) = &state {
        for m in s.mounts.iter().rev() {
            report.unmounted += mounter
                .unmount_record(&dir, &m.record)
                .map_err(merr(&dir))?;
        }
    }
    report.unmounted += mounter.unmount_all_beneath(&dir).map_err(merr(&dir))?;
    let left = mounter.mounts_beneath(&dir).map_err(merr(&dir))?;
    if !left.is_empty() {
        return Err(CleanupError::StillMounted { dir, left });
    }
    if let Some(rec) = state.as_ref().and_then(|s| s.network.as_ref()) {
        // After the VMM is gone (its tap fd with it).
        crate::network::unwire(rec).map_err(|source| CleanupError::Network {
            dir: dir.clone(),
            source,
        })?;
    }
    if let Some(s) = &state {
        crate::host_cgroup::remove_dirs(&s.cgroup, wait).map_err(|source| {
            CleanupError::Cgroup {
                dir: dir.clone(),
                source,
            }
        })?;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CleanupError::Remove { dir, source }),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::HostMounter;
    use crate::state::ProcessIdentity;
    use std::path::Path;

    #[test]
    fn missing_dir_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "gone").unwrap();
        let r = cleanup_sandbox_dir(&paths, &HostMounter, Duration::from_secs(1)).unwrap();
        assert!(!r.existed);
    }

    /// A "shim killed" leftover: a live process recorded as the VMM, a bind mount in shared/,
    /// files. Cleanup kills the process, unmounts, removes. Needs root for the mount.
    #[test]
    fn kills_recorded_vmm_unmounts_and_removes() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to bind-mount"
        );
        let _serial = crate::safe_mount::serial_mount_tests();
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(&dir.path().join("state"), "default", "sb").unwrap();
        paths.create().unwrap();
        // Not our child after this: spawned through a shell that exits, like an orphaned VMM.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let vmm = ProcessIdentity::of(pid).unwrap();
        let src = dir.path().join("rootfs");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("keep"), b"data").unwrap();
        let mut state = SandboxStateFile::new("sb");
        state.vmm = Some(vmm);
        let rec = HostMounter
            .bind_beneath(
                &paths.shared(),
                Path::new("c1/rootfs"),
                &src,
                false,
                &mut |_| {},
            )
            .unwrap();
        state.mounts.push(crate::state::RecordedMount {
            container: "c1".into(),
            record: rec,
        });
        state.write(&paths.state_file()).unwrap();
        // The guest renames the container's dir: the recorded mount is found by its id.
        std::fs::rename(paths.shared().join("c1"), paths.shared().join("moved")).unwrap();

        let r = cleanup_sandbox_dir(&paths, &HostMounter, Duration::from_secs(30)).unwrap();
        assert!(r.killed_vmm);
        assert_eq!(r.unmounted, 1);
        assert!(!vmm.is_alive());
        assert!(!paths.dir().exists());
        assert_eq!(
            std::fs::read(src.join("keep")).unwrap(),
            b"data",
            "source damaged"
        );
        // Idempotent.
        let r = cleanup_sandbox_dir(&paths, &HostMounter, Duration::from_secs(1)).unwrap();
        assert!(!r.existed);
    }

    #[test]
    fn recorded_pid_of_another_process_is_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb").unwrap();
        paths.create().unwrap();
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        let mut state = SandboxStateFile::new("sb");
        // Same pid, different start time: the pid was reused by someone else.
        state.vmm = Some(ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        });
        state.write(&paths.state_file()).unwrap();
        let r = cleanup_sandbox_dir(&paths, &HostMounter, Duration::from_secs(1)).unwrap();
        assert!(!r.killed_vmm);
        assert!(!paths.dir().exists());
    }

    #[test]
    fn corrupt_state_still_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb").unwrap();
        paths.create().unwrap();
        std::fs::write(paths.state_file(), b"garbage").unwrap();
        let r = cleanup_sandbox_dir(&paths, &HostMounter, Duration::from_secs(1)).unwrap();
        assert!(r.state_error.is_some());
        assert!(!paths.dir().exists());
    }
}
