//! The real backend: one `vessel-vmm` process per sandbox; the agent is reached over the VMM's
//! hybrid vsock Unix socket (`CONNECT 1024` → `OK <port>`), the rootfs over virtio-fs.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vessel_protocol::errors::chain;
use vessel_protocol::log_format::LogFormat;

use vessel_protocol::agent::Storage;
use vessel_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};

use super::launch::{guest_flags, host_flags, snapshot_store_with, VmmSnapshotTool};
use super::{
    connect_until, open_log, standard_diagnostics, ChildProcess, LaunchRequest, VmBackend, VmError,
    VmInstance,
};
use crate::share::{GUEST_POD_DIR, GUEST_SHARED_ROOT, SHARED_FS_TAG};
use crate::state::SandboxPaths;
use std::os::fd::AsRawFd;
use vessel_protocol::vmm_launch::{HostFlags, LaunchMode, VmmLaunch};

/// Starts `vessel-vmm` as configured in `[hypervisor]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmmBackend {
    snapshots: VmmSnapshotTool,
}

impl VmmBackend {
    /// A backend making its snapshots with `snapshots` (unit tests).
    pub fn with_snapshot_tool(snapshots: VmmSnapshotTool) -> Self {
        VmmBackend { snapshots }
    }
}

/// The command line for the VMM of one sandbox (separate so it can be checked in tests).
/// Creates the jail's empty directory when jailing.
pub fn vmm_command(req: &LaunchRequest<'_>) -> std::io::Result<Command> {
    launch_command(req, LaunchMode::Boot)
}

/// The command line restoring `snapshot` for one sandbox. The guest flags are checked by the
/// VMM against the snapshot (it refuses one that does not match).
pub fn vmm_restore_command(req: &LaunchRequest<'_>, snapshot: &Path) -> std::io::Result<Command> {
    launch_command(req, LaunchMode::Restore(snapshot.to_path_buf()))
}

fn launch_command(req: &LaunchRequest<'_>, mode: LaunchMode) -> std::io::Result<Command> {
    launch_command_with_metrics(req, mode, None)
}

/// The launch, with `--metrics-fd` when the VMM inherits a metrics file under that number.
fn launch_command_with_metrics(
    req: &LaunchRequest<'_>,
    mode: LaunchMode,
    metrics_fd: Option<std::os::fd::RawFd>,
) -> std::io::Result<Command> {
    let mut host = sandbox_host_flags(req)?;
    host.metrics_fd = metrics_fd;
    let launch = VmmLaunch {
        mode,
        guest: guest_flags(req.config),
        host,
    };
    let mut cmd = Command::new(&req.config.hypervisor.path);
    cmd.args(launch.to_args());
    Ok(cmd)
}

fn sandbox_host_flags(req: &LaunchRequest<'_>) -> std::io::Result<HostFlags> {
    let mut flags = host_flags(
        req.config,
        &req.paths.vsock(),
        &req.paths.console(),
        &req.paths.shared(),
        &req.paths.jail(),
    )?;
    if let Some(tap) = req.tap {
        flags.net_tap_fd = Some(tap.as_raw_fd());
    }
    if flags.log_format == LogFormat::Json {
        flags.log_sandbox = Some(req.sandbox_id.to_string());
    }
    Ok(flags)
}

/// The snapshot to restore this sandbox from, made now if needed; `None` (cold boot) when
/// snapshots are off or one cannot be had, with the reason logged.
fn usable_snapshot(req: &LaunchRequest<'_>, tool: VmmSnapshotTool) -> Option<PathBuf> {
    if !req.config.snapshot.enabled {
        return None;
    }
    let deadline = Instant::now() + req.config.agent_timeout();
    match snapshot_store_with(req.config, tool).ensure(req.config, deadline) {
        Ok(path) => Some(path),
        Err(e) => {
            log::warn!(
                "sandbox {}: cold boot, no snapshot: {e}",
                req.sandbox_id,
                e = chain(&e)
            );
            None
        }
    }
}

impl VmBackend for VmmBackend {
    fn has_nic(&self) -> bool {
        true
    }

    fn launch(&self, req: &LaunchRequest<'_>) -> Result<Box<dyn VmInstance>, VmError> {
        let h = &req.config.hypervisor;
        for (what, path) in [
            ("VMM binary (hypervisor.path)", &h.path),
            ("guest kernel (hypervisor.kernel)", &h.kernel),
            ("guest initrd (hypervisor.initrd)", &h.initrd),
        ] {
            if !path.is_file() {
                return Err(VmError::MissingFile {
                    sandbox: req.sandbox_id.to_string(),
                    what,
                    path: path.clone(),
                });
            }
        }
        // A stale socket from a crashed run would make the VMM's bind fail.
        let _ = std::fs::remove_file(req.paths.vsock());
        let log = open_log(req.sandbox_id, &req.paths.vmm_log())?;
        let log2 = log.try_clone().map_err(|source| VmError::Prepare {
            sandbox: req.sandbox_id.to_string(),
            path: req.paths.vmm_log(),
            source,
        })?;
        // The VMM's counters (`vessel monitor` reads them): a file it rewrites in place.
        let metrics = open_metrics_file(req)?;
        let snapshot = usable_snapshot(req, self.snapshots);
        let mode = match &snapshot {
            Some(dir) => LaunchMode::Restore(dir.clone()),
            None => LaunchMode::Boot,
        };
        let cmd = launch_command_with_metrics(req, mode, Some(metrics.as_raw_fd()));
        let mut cmd = cmd.map_err(|source| VmError::Prepare {
            sandbox: req.sandbox_id.to_string(),
            path: req.paths.jail(),
            source,
        })?;
        if let Some(cg) = req.cgroup {
            // Before exec: every page the VMM touches, and its jailed child, are the pod's.
            crate::host_cgroup::join_before_exec(&mut cmd, cg);
        }
        if let Some(tap) = req.tap {
            // The VMM inherits the tap under the number `--net-tap-fd` names.
            crate::sys::keep_fd_across_exec(&mut cmd, tap.as_raw_fd());
        }
        crate::sys::keep_fd_across_exec(&mut cmd, metrics.as_raw_fd());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir(req.paths.dir());
        // Own process group: a terminal's signals for the shim do not reach the VM.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        log::info!(
            "sandbox {}: starting {} ({} MiB, {} vCPU), {}",
            req.sandbox_id,
            h.path.display(),
            h.memory_mib,
            h.vcpus,
            snapshot
                .as_ref()
                .map_or("cold boot".to_string(), |d| format!(
                    "restoring {}",
                    d.display()
                ))
        );
        let process = ChildProcess::spawn(cmd, "vessel-vmm").map_err(|source| VmError::Spawn {
            sandbox: req.sandbox_id.to_string(),
            program: h.path.clone(),
            source,
        })?;
        Ok(Box::new(VmmInstance {
            sandbox: req.sandbox_id.to_string(),
            paths: req.paths.clone(),
            process,
            restored: snapshot.is_some(),
        }))
    }
}

/// Creates (empty) the sandbox's metrics file, for the VMM to inherit.
fn open_metrics_file(req: &LaunchRequest<'_>) -> Result<std::fs::File, VmError> {
    let path = req.paths.vmm_metrics();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|source| VmError::Prepare {
            sandbox: req.sandbox_id.to_string(),
            path,
            source,
        })
}

struct VmmInstance {
    sandbox: String,
    paths: SandboxPaths,
    process: ChildProcess,
    restored: bool,
}

impl VmInstance for VmmInstance {
    fn process(&self) -> &ChildProcess {
        &self.process
    }

    fn restored(&self) -> bool {
        self.restored
    }

    fn connect_agent(&self, deadline: Instant) -> Result<UnixStream, VmError> {
        let uds = self.paths.vsock();
        connect_until(
            &self.sandbox,
            &self.process,
            deadline,
            &|| self.diagnostics(),
            &mut || vsock_attempt(&uds, deadline),
        )
    }

    fn sandbox_storages(&self) -> Vec<Storage> {
        vec![Storage {
            driver: "virtiofs".to_string(),
            source: SHARED_FS_TAG.to_string(),
            fstype: "virtiofs".to_string(),
            mount_point: GUEST_SHARED_ROOT.to_string(),
            ..Default::default()
        }]
    }

    fn guest_shared_dir(&self) -> PathBuf {
        PathBuf::from(GUEST_SHARED_ROOT)
    }

    fn guest_pod_dir(&self) -> PathBuf {
        PathBuf::from(GUEST_POD_DIR)
    }

    fn diagnostics(&self) -> String {
        standard_diagnostics(&self.paths)
    }
}

fn vsock_attempt(uds: &Path, deadline: Instant) -> Result<UnixStream, String> {
    if !uds.exists() {
        return Err(format!("{} does not exist yet", uds.display()));
    }
    let io_timeout = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    hybrid_vsock::connect(uds, AGENT_VSOCK_PORT, io_timeout).map_err(|e| chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn command_line_follows_config() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb1").unwrap();
        let mut config = Config::default();
        config.hypervisor.seccomp = false;
        config.hypervisor.kernel_params = "quiet".into();
        let req = LaunchRequest {
            sandbox_id: "sb1",
            paths: &paths,
            config: &config,
            cgroup: None,
            tap: None,
        };
        let cmd = vmm_command(&req).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let sb = dir.path().join("default/sb1");
        let expect = [
            "--kernel",
            "/usr/local/share/vessel/vmlinux",
            "--initrd",
            "/usr/local/share/vessel/initrd.cpio",
            "--cmdline",
            "quiet vessel.warmup=1",
            "--mem-mib",
            "128",
            "--vcpus",
            "1",
            "--net",
            "--vsock-uds",
            &sb.join("vsock.sock").display().to_string(),
            "--console",
            &sb.join("console.log").display().to_string(),
            "--console-max-bytes",
            "1048576",
            "--shared-dir",
            &format!("vessel={}", sb.join("shared").display()),
            "--no-seccomp",
            "--jail",
            &sb.join("jail").display().to_string(),
        ];
        assert_eq!(args, expect);
        assert!(sb.join("jail").is_dir(), "the jail's empty dir is made");
        assert_eq!(cmd.get_program(), "/usr/local/bin/vessel-vmm");
        // A pod network: the tap's fd number, which the child inherits.
        let tap = std::fs::File::open("/dev/null").unwrap();
        let with_tap = LaunchRequest {
            tap: Some(std::os::fd::AsFd::as_fd(&tap)),
            ..req
        };
        let args: Vec<String> = vmm_command(&with_tap)
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tap).to_string();
        assert_eq!(args[args.len() - 2..], ["--net-tap-fd".to_string(), fd]);
        // JSON logs: the format and the sandbox the lines name.
        let mut json = config.clone();
        json.runtime.log_format = "json".into();
        let args: Vec<String> = vmm_command(&LaunchRequest {
            config: &json,
            ..req
        })
        .unwrap()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        assert_eq!(
            args[args.len() - 4..],
            ["--log-format", "json", "--log-sandbox", "sb1"]
        );
    }

    #[test]
    fn restore_command_carries_the_snapshot_and_the_same_flags() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb1").unwrap();
        let config = Config::default();
        let req = LaunchRequest {
            sandbox_id: "sb1",
            paths: &paths,
            config: &config,
            cgroup: None,
            tap: None,
        };
        let args = |c: Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let boot = args(vmm_command(&req).unwrap());
        let restore =
            args(vmm_restore_command(&req, Path::new("/snaps/0123456789abcdef")).unwrap());
        assert_eq!(restore[..2], ["--restore", "/snaps/0123456789abcdef"]);
        assert_eq!(restore[2..], boot[..]);
    }

    /// With snapshots on, the first sandbox makes the snapshot (snapshot-create), later ones
    /// check and restore it; when making it fails the sandbox cold-boots. A script stands in
    /// for the VMM and records how it was called.
    #[test]
    fn snapshot_is_made_once_then_restored_and_failure_falls_back_to_boot() {
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let fake_vmm = dir.path().join("fake-vmm");
        std::fs::write(
            &fake_vmm,
            format!(
                "#!/bin/sh\necho \"$@\" >> {calls}\n\
                 case \"$1\" in\n\
                 snapshot-create) read line; [ -e {fail} ] && exit 1; mkdir -p \"$3\" && echo {{}} > \"$3/vm.json\"; exit 0;;\n\
                 snapshot-check) exit 0;;\n\
                 esac\nexit 1\n",
                calls = calls.display(),
                fail = dir.path().join("fail").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &fake_vmm,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut config = Config::default();
        config.hypervisor.path = fake_vmm.clone();
        config.hypervisor.kernel = fake_vmm.clone();
        config.hypervisor.initrd = fake_vmm;
        config.snapshot.dir = dir.path().join("snapshots");
        let start = |id: &str| {
            let paths = SandboxPaths::new(dir.path(), "default", id).unwrap();
            paths.create().unwrap();
            let req = LaunchRequest {
                sandbox_id: id,
                paths: &paths,
                config: &config,
                cgroup: None,
                tap: None,
            };
            let vm = VmmBackend::with_snapshot_tool(VmmSnapshotTool::with_driver(
                crate::vm::launch::tests::tell_at_once,
            ))
            .launch(&req)
            .unwrap();
            vm.process().wait_timeout(Duration::from_secs(30));
        };
        let first_word = |n: usize| -> Vec<String> {
            std::fs::read_to_string(&calls)
                .unwrap()
                .lines()
                .map(|l| l.split(' ').next().unwrap_or("").to_string())
                .skip(n)
                .collect()
        };
        start("sb1");
        start("sb2");
        assert_eq!(
            first_word(0),
            [
                "snapshot-create",
                "--restore",
                "snapshot-check",
                "--restore"
            ]
        );
        // The store's snapshot was taken away and cannot be made: cold boot.
        std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
        std::fs::write(dir.path().join("fail"), "").unwrap();
        start("sb3");
        assert_eq!(first_word(4), ["snapshot-create", "--kernel"]);
    }

    #[test]
    fn missing_kernel_is_reported_before_spawning() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb1").unwrap();
        paths.create().unwrap();
        let mut config = Config::default();
        config.snapshot.enabled = false;
        config.hypervisor.path = PathBuf::from("/bin/true");
        config.hypervisor.kernel = dir.path().join("no-vmlinux");
        let req = LaunchRequest {
            sandbox_id: "sb1",
            paths: &paths,
            config: &config,
            cgroup: None,
            tap: None,
        };
        let err = VmmBackend::default().launch(&req).err().unwrap();
        assert!(
            matches!(&err, VmError::MissingFile { what, .. } if what.contains("kernel")),
            "{err}"
        );
        assert!(err.to_string().contains("no-vmlinux"));
    }

    /// The real VMM-crash path: a "VMM" that prints to its console and dies is noticed at
    /// once, with its status and console tail in the error.
    #[test]
    fn vmm_that_dies_is_reported_with_console_tail() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb1").unwrap();
        paths.create().unwrap();
        let fake_vmm = dir.path().join("fake-vmm");
        std::fs::write(
            &fake_vmm,
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --console ] && c=$2; shift; done\n\
             echo 'guest: i8042: No controller found' > \"$c\"; echo 'vmm: KVM_RUN failed' >&2; exit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &fake_vmm,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut config = Config::default();
        config.snapshot.enabled = false;
        config.hypervisor.path = fake_vmm.clone();
        config.hypervisor.kernel = fake_vmm.clone();
        config.hypervisor.initrd = fake_vmm;
        let req = LaunchRequest {
            sandbox_id: "sb1",
            paths: &paths,
            config: &config,
            cgroup: None,
            tap: None,
        };
        let vm = VmmBackend::default().launch(&req).unwrap();
        let err = vm
            .connect_agent(Instant::now() + Duration::from_secs(120))
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VmError::Exited { .. }), "{text}");
        assert!(text.contains("exited with status 1"), "{text}");
        assert!(text.contains("No controller found"), "{text}");
        assert!(text.contains("KVM_RUN failed"), "{text}");
    }
}
