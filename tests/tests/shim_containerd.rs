//! containerd-shim-vessel-v2 under a real containerd (Debian's 1.6), driven with `ctr`.
//!
//! Needs root, `containerd`, `runc`, `busybox-static`, and built binaries:
//! `cargo build -p containerd-shim-vessel-v2 -p vessel-vmm`. The guest kernel and initrd are
//! taken from `VESSEL_KERNEL` / `VESSEL_INITRD` (default: /usr/local/share/vessel/{vmlinux,
//! initrd.cpio}); `VESSEL_TEST_AGENT_TIMEOUT` (s, default 600) bounds a boot.
//!
//! Tests that need a booted VM go through one shared boot probe: if the VM cannot boot here,
//! each of them fails with the probe's error (which carries the VMM's console tail).

#![allow(clippy::unwrap_used)] // test helpers: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vessel_tests::containerd::{workspace_binary, Containerd, CtrOutput, BUSYBOX_REF, NAMESPACE};

const VESSEL: &str = "io.containerd.vessel.v2";
const RUNC: &str = "io.containerd.runc.v2";

/// Where the shim runs containers.
#[derive(Clone, Copy)]
enum Backend {
    /// The product: a VM per pod.
    Vmm,
    /// The real agent on the host, no VM: exercises shim + runtime + agent where no guest boots.
    HostAgent,
}

/// A vessel configuration for one test: its own state root.
struct VesselEnv {
    dir: tempfile::TempDir,
    config: PathBuf,
    backend: Backend,
}

impl VesselEnv {
    fn new(kernel: Option<&Path>) -> VesselEnv {
        VesselEnv::with(Backend::Vmm, kernel, None)
    }

    fn for_backend(backend: Backend) -> VesselEnv {
        VesselEnv::with(backend, None, None)
    }

    fn with(backend: Backend, kernel: Option<&Path>, initrd: Option<&Path>) -> VesselEnv {
        let dir = tempfile::Builder::new()
            .prefix("vstate")
            .tempdir_in("/tmp")
            .unwrap();
        let vmm = workspace_binary("vessel-vmm", "vessel-vmm").unwrap_or_else(|e| panic!("{e}"));
        workspace_binary("containerd-shim-vessel-v2", "containerd-shim-vessel-v2")
            .unwrap_or_else(|e| panic!("{e}"));
        let env_path =
            |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_string());
        let kernel = kernel
            .map(|k| k.display().to_string())
            .unwrap_or_else(|| env_path("VESSEL_KERNEL", "/usr/local/share/vessel/vmlinux"));
        let initrd = initrd
            .map(|k| k.display().to_string())
            .unwrap_or_else(|| env_path("VESSEL_INITRD", "/usr/local/share/vessel/initrd.cpio"));
        let timeout = env_path("VESSEL_TEST_AGENT_TIMEOUT", "600");
        let backend_lines = match backend {
            Backend::Vmm => "backend = \"vmm\"\n".to_string(),
            Backend::HostAgent => format!(
                "backend = \"host-agent\"\nagent_path = \"{}\"\n",
                workspace_binary("vessel-agent", "vessel-agent")
                    .unwrap_or_else(|e| panic!("{e}"))
                    .display()
            ),
        };
        let config = dir.path().join("vessel.toml");
        std::fs::write(
            &config,
            format!(
                "[hypervisor]\n{backend_lines}path = \"{}\"\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\n\
                 [runtime]\nstate_root = \"{}\"\nagent_timeout_secs = {timeout}\nlog_level = \"debug\"\n",
                vmm.display(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        VesselEnv {
            dir,
            config,
            backend,
        }
    }

    /// A container id of this backend's own: the VM and host-agent twins of a scenario run
    /// at the same time, and a container's default cgroupsPath (`/<namespace>/<id>`) is
    /// host-wide.
    fn id(&self, base: &str) -> String {
        let suffix = match self.backend {
            Backend::Vmm => "-vm",
            Backend::HostAgent => "-ha",
        };
        format!("{base}{suffix}")
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Sandbox dirs left in the state root.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.state_root())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn containerd(&self) -> Containerd {
        let ctrd = Containerd::start_with_env(&[("VESSEL_CONFIG", self.config.to_str().unwrap())])
            .unwrap_or_else(|e| panic!("starting containerd: {e:#}"));
        ctrd.import_busybox()
            .unwrap_or_else(|e| panic!("importing busybox: {e:#}"));
        ctrd
    }
}

/// Processes whose command line mentions `needle` (shims of a given containerd, VMMs).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && !text.starts_with("ctr ") {
            found.push(format!("{name}: {text}"));
        }
    }
    found
}

/// The parent of process `pid` (`PPid:` of `/proc/<pid>/status`).
fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `f` holds, up to `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn describe(out: &CtrOutput, ctrd: &Containerd) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- containerd log tail ---\n{}",
        out.status,
        out.stdout,
        out.stderr,
        ctrd.log_tail()
    )
}

/// Proves the harness: the same containerd + image run busybox with runc.
#[test]
fn harness_runs_busybox_with_runc() {
    let ctrd = Containerd::start().unwrap_or_else(|e| panic!("{e:#}"));
    ctrd.import_busybox().unwrap_or_else(|e| panic!("{e:#}"));
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNC,
        BUSYBOX_REF,
        "runc-echo",
        "echo",
        "hello from busybox",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    assert_eq!(out.stdout, "hello from busybox\n");
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNC,
        BUSYBOX_REF,
        "runc-exit",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status, Some(3), "{}", describe(&out, &ctrd));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr.trim(), "err");
    ctrd.remove_all();
    assert!(
        eventually(Duration::from_secs(10), || ctrd.mounts().is_empty()),
        "mounts left: {:?}",
        ctrd.mounts()
    );
}

/// A kernel path that does not exist: a clear error naming it, and nothing left behind.
#[test]
fn missing_kernel_is_a_clear_error_and_leaves_nothing() {
    let env = VesselEnv::new(Some(Path::new("/nonexistent/vessel/vmlinux")));
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        "nokernel",
        "true",
    ]);
    assert!(!out.success(), "{}", describe(&out, &ctrd));
    assert!(
        out.stderr.contains("guest kernel") && out.stderr.contains("/nonexistent/vessel/vmlinux"),
        "{}",
        describe(&out, &ctrd)
    );
    assert_nothing_left(&env, &ctrd);
}

/// The real VMM given a kernel that is not a kernel dies during create: containerd gets the
/// VMM's exit and log tail, and no mount, socket, process or state dir survives.
#[test]
fn vmm_dying_during_create_is_reported_and_cleaned_up() {
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![0u8; 4096]).unwrap();
    let env = VesselEnv::with(Backend::Vmm, Some(junk.path()), Some(junk.path()));
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        "vmmdies",
        "true",
    ]);
    assert!(!out.success(), "{}", describe(&out, &ctrd));
    assert!(
        out.stderr.contains("vessel-vmm") && out.stderr.contains("before the agent answered"),
        "{}",
        describe(&out, &ctrd)
    );
    assert!(
        out.stderr.contains("console tail"),
        "{}",
        describe(&out, &ctrd)
    );
    assert_nothing_left(&env, &ctrd);
}

fn assert_nothing_left(env: &VesselEnv, ctrd: &Containerd) {
    let sock = ctrd.socket().display().to_string();
    assert!(
        eventually(Duration::from_secs(20), || env.leftovers().is_empty()
            && ctrd.mounts().is_empty()
            && processes_mentioning(&sock).is_empty()
            && processes_mentioning(&env.state_root().display().to_string())
                .is_empty()),
        "left behind: state {:?}, mounts {:?}, processes {:?} {:?}",
        env.leftovers(),
        ctrd.mounts(),
        processes_mentioning(&sock),
        processes_mentioning(&env.state_root().display().to_string()),
    );
}

/// One boot attempt shared by the tests that need a VM: Ok, or the error to fail with.
fn vm_boot_probe() -> Result<(), String> {
    static PROBE: OnceLock<Mutex<Option<Result<(), String>>>> = OnceLock::new();
    let cell = PROBE.get_or_init(|| Mutex::new(None));
    let mut g = cell.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = g.as_ref() {
        return r.clone();
    }
    let env = VesselEnv::new(None);
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        "probe",
        "echo",
        "vm-ok",
    ]);
    let r = if out.success() && out.stdout == "vm-ok\n" {
        Ok(())
    } else {
        Err(format!(
            "the vessel VM did not run a container here:\n{}",
            describe(&out, &ctrd)
        ))
    };
    *g = Some(r.clone());
    r
}

fn need_vm() {
    if let Err(e) = vm_boot_probe() {
        panic!("{e}");
    }
}

fn scenario_run_prints_output_and_exit_code(env: VesselEnv) {
    let v_echo = env.id("v-echo");
    let v_exit = env.id("v-exit");
    let v_stdin = env.id("v-stdin");
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        "--mount",
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro",
        BUSYBOX_REF,
        v_echo.as_str(),
        "sh",
        "-c",
        "echo hello from vessel; cat /proc/self/cgroup; \
         cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; true",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    let (first, cgroups) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
    assert_eq!(first, "hello from vessel", "{}", describe(&out, &ctrd));
    // Where the container's cgroup is (`ctr run` gives it no cgroup namespace; the agent's
    // `cgroup_placement`): in a VM restored from the snapshot, the first spare cgroup made
    // before the snapshot; with the host agent, the spec's `/<namespace>/<id>`, as runc does.
    // In the guest every controller but `cpu` is enabled below the root (the container
    // mounts the hierarchy's root: no cgroup namespace): `ctr run` asks for no CPU settings
    // (its shares are cgroup v1's default; `cgroups::V2_CPU_CONTROLLER`).
    match env.backend {
        Backend::Vmm => {
            let lines: Vec<&str> = cgroups.lines().collect();
            assert_eq!(
                lines.first(),
                Some(&"0::/spare-0"),
                "{}",
                describe(&out, &ctrd)
            );
            let controllers: Vec<&str> = lines
                .get(1)
                .map(|l| l.split_whitespace().collect())
                .unwrap_or_default();
            assert!(
                controllers.contains(&"memory") && !controllers.contains(&"cpu"),
                "{}",
                describe(&out, &ctrd)
            );
        }
        Backend::HostAgent => assert!(
            cgroups
                .lines()
                .any(|l| l.ends_with(&format!(":/{NAMESPACE}/{v_echo}"))),
            "{}",
            describe(&out, &ctrd)
        ),
    }
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_exit.as_str(),
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status, Some(7), "{}", describe(&out, &ctrd));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr.trim(), "err");
    let out = ctrd
        .ctr_with_input(
            &[
                "run",
                "--rm",
                "--runtime",
                VESSEL,
                BUSYBOX_REF,
                v_stdin.as_str(),
                "cat",
            ],
            b"piped input\n",
        )
        .unwrap();
    assert_eq!(out.stdout, "piped input\n", "{}", describe(&out, &ctrd));
    assert_nothing_left(&env, &ctrd);
}

fn scenario_exec_and_tty(env: VesselEnv) {
    let v_exec = env.id("v-exec");
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_exec.as_str(),
        "sleep",
        "1000",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        v_exec.as_str(),
        "sh",
        "-c",
        "echo exec-out; exit 4",
    ]);
    assert_eq!(out.status, Some(4), "{}", describe(&out, &ctrd));
    assert_eq!(out.stdout, "exec-out\n");
    let out = ctrd.ctr_in_pty(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "e2",
        v_exec.as_str(),
        "sh",
        "-c",
        "test -t 0 && echo in-tty; test -t 1 && echo out-tty",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    // Through the container's terminal (and script's): both ends are ttys; ptys add "\r"s.
    let text = out.stdout.replace(['\r', '\0'], "");
    assert!(
        text.contains("in-tty\nout-tty\n"),
        "tty output: {:?}",
        out.stdout
    );
    // Exec of a binary that does not exist: an error, promptly (Kata #8026 hung here).
    let started = Instant::now();
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e3",
        v_exec.as_str(),
        "/no/such/binary",
    ]);
    assert!(!out.success(), "{}", describe(&out, &ctrd));
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "exec of a missing binary hung"
    );
    // The task is still fine afterwards.
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e4",
        v_exec.as_str(),
        "echo",
        "still-here",
    ]);
    assert_eq!(out.stdout, "still-here\n", "{}", describe(&out, &ctrd));
    ctrd.remove_all();
    assert_nothing_left(&env, &ctrd);
}

fn scenario_kill_reports_signal_exit_and_kill_of_exited_is_not_found(env: VesselEnv) {
    let v_done = env.id("v-done");
    let v_kill = env.id("v-kill");
    let ctrd = env.containerd();
    let run = ctrd
        .ctr_spawn(&[
            "run",
            "--rm",
            "--runtime",
            VESSEL,
            BUSYBOX_REF,
            v_kill.as_str(),
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(
        eventually(Duration::from_secs(600), || ctrd
            .ctr(&["task", "ls"])
            .stdout
            .contains("RUNNING")),
        "task never ran: {}",
        ctrd.log_tail()
    );
    let out = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", v_kill.as_str()]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    let done = run.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(137), "ctr run: {done:?}");

    let out = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_done.as_str(),
        "true",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    assert!(eventually(Duration::from_secs(120), || ctrd
        .ctr(&["task", "ls"])
        .stdout
        .contains("STOPPED")));
    let out = ctrd.ctr(&["task", "kill", v_done.as_str()]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("not found"),
        "{}",
        describe(&out, &ctrd)
    );
    let out = ctrd.ctr(&["task", "kill", "no-such-task"]);
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{}",
        describe(&out, &ctrd)
    );
    ctrd.remove_all();
    assert_nothing_left(&env, &ctrd);
}

fn scenario_one_mib_of_output_arrives_intact(env: VesselEnv) {
    let v_big = env.id("v-big");
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_big.as_str(),
        "seq",
        "1",
        "200000",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    let expect: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert!(expect.len() > 1 << 20);
    assert_eq!(out.stdout.len(), expect.len(), "length differs");
    if out.stdout != expect {
        let line = expect
            .lines()
            .zip(out.stdout.lines())
            .position(|(e, g)| e != g)
            .unwrap_or(0);
        let got: Vec<&str> = out.stdout.lines().skip(line).take(3).collect();
        let want: Vec<&str> = expect.lines().skip(line).take(3).collect();
        panic!(
            "content differs from line {}: got {got:?}, expected {want:?}",
            line + 1
        );
    }
    assert_nothing_left(&env, &ctrd);
}

fn scenario_write_lands_in_the_snapshot(env: VesselEnv) {
    let v_write = env.id("v-write");
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_write.as_str(),
        "sh",
        "-c",
        "echo written-in-vm > /marker.txt; sync",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    let snapshots = ctrd
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs/marker.txt"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(found.len(), 1, "marker in snapshots: {found:?}");
    assert_eq!(
        std::fs::read_to_string(&found[0]).unwrap(),
        "written-in-vm\n"
    );
    let out = ctrd.ctr(&["containers", "delete", v_write.as_str()]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    assert_nothing_left(&env, &ctrd);
}

/// `cycles` create/delete cycles leak no fd of containerd's, no mount, no process, no state.
/// The host-agent twin runs 20; a VM run costs ~20 s a cycle on KVM-PVM, so the VM runs 6 —
/// still more than the fd slack below, so a leak of one fd per cycle shows.
fn scenario_create_delete_cycles_leak_nothing(env: VesselEnv, cycles: usize) {
    let v_warm = env.id("v-warm");
    let ctrd = env.containerd();
    let pid = ctrd.pid().unwrap();
    // One cycle first so containerd's lazily opened fds exist before counting.
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_warm.as_str(),
        "true",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    let fds_before = fd_count(pid);
    let mounts_before = vessel_tests::containerd::mounts_under(Path::new("/")).len();
    for i in 0..cycles {
        let id = env.id(&format!("v-cycle-{i}"));
        let out = ctrd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            VESSEL,
            BUSYBOX_REF,
            &id,
            "echo",
            &id,
        ]);
        assert!(out.success(), "cycle {i}: {}", describe(&out, &ctrd));
        assert_eq!(out.stdout, format!("{id}\n"));
    }
    assert_nothing_left(&env, &ctrd);
    let mounts_after = vessel_tests::containerd::mounts_under(Path::new("/")).len();
    assert!(
        mounts_after <= mounts_before,
        "mounts: {mounts_before} → {mounts_after}"
    );
    // containerd's own fds may move by a few (gRPC connections); 6 leaked cycles would not.
    let fds_after = fd_count(pid);
    assert!(
        fds_after <= fds_before + 4,
        "containerd fds: {fds_before} → {fds_after}"
    );
}

#[test]
fn vm_run_prints_output_and_exit_code() {
    need_vm();
    scenario_run_prints_output_and_exit_code(VesselEnv::new(None));
}

#[test]
fn host_agent_run_prints_output_and_exit_code() {
    scenario_run_prints_output_and_exit_code(VesselEnv::for_backend(Backend::HostAgent));
}

#[test]
fn vm_exec_and_tty() {
    need_vm();
    scenario_exec_and_tty(VesselEnv::new(None));
}

#[test]
fn host_agent_exec_and_tty() {
    scenario_exec_and_tty(VesselEnv::for_backend(Backend::HostAgent));
}

#[test]
fn vm_kill_reports_signal_exit_and_kill_of_exited_is_not_found() {
    need_vm();
    scenario_kill_reports_signal_exit_and_kill_of_exited_is_not_found(VesselEnv::new(None));
}

#[test]
fn host_agent_kill_reports_signal_exit_and_kill_of_exited_is_not_found() {
    scenario_kill_reports_signal_exit_and_kill_of_exited_is_not_found(VesselEnv::for_backend(
        Backend::HostAgent,
    ));
}

#[test]
fn vm_one_mib_of_output_arrives_intact() {
    need_vm();
    scenario_one_mib_of_output_arrives_intact(VesselEnv::new(None));
}

#[test]
fn host_agent_one_mib_of_output_arrives_intact() {
    scenario_one_mib_of_output_arrives_intact(VesselEnv::for_backend(Backend::HostAgent));
}

#[test]
fn vm_write_lands_in_the_snapshot() {
    need_vm();
    scenario_write_lands_in_the_snapshot(VesselEnv::new(None));
}

#[test]
fn host_agent_write_lands_in_the_snapshot() {
    scenario_write_lands_in_the_snapshot(VesselEnv::for_backend(Backend::HostAgent));
}

#[test]
fn vm_create_delete_cycles_leak_nothing() {
    need_vm();
    scenario_create_delete_cycles_leak_nothing(VesselEnv::new(None), 6);
}

#[test]
fn host_agent_twenty_create_delete_cycles_leak_nothing() {
    scenario_create_delete_cycles_leak_nothing(VesselEnv::for_backend(Backend::HostAgent), 20);
}

/// The machine dies under a running task (SIGKILL to the VMM / host agent): the task's exit is
/// reported (255), delete works, and nothing is left behind.
fn scenario_machine_crash_is_reported_and_cleaned_up(env: VesselEnv) {
    let v_crash = env.id("v-crash");
    let ctrd = env.containerd();
    let run = ctrd
        .ctr_spawn(&[
            "run",
            "--rm",
            "--runtime",
            VESSEL,
            BUSYBOX_REF,
            v_crash.as_str(),
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(
        eventually(Duration::from_secs(600), || ctrd
            .ctr(&["task", "ls"])
            .stdout
            .contains("RUNNING")),
        "task never ran: {}",
        ctrd.log_tail()
    );
    let state = env.state_root().display().to_string();
    let machine: Vec<i32> = processes_mentioning(&state)
        .iter()
        .filter(|p| p.contains("vessel-vmm") || p.contains("vessel-agent"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    // The machine itself: the host agent, or the VMM — inside its jail the VMM is the child
    // of the jail's waiter, which only forwards signals and exits with the VMM's status.
    let inner: Vec<i32> = machine
        .iter()
        .copied()
        .filter(|&p| machine.len() == 1 || parent_of(p).is_some_and(|pp| machine.contains(&pp)))
        .collect();
    assert_eq!(
        inner.len(),
        1,
        "machine processes (one, or a jail's waiter and its VMM): {:?}",
        processes_mentioning(&state)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inner[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // `ctr run` returns the task's exit: 255, the status for "the machine went away".
    let done = run.wait_with_output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(255),
        "ctr run: {done:?}\n{}",
        ctrd.log_tail()
    );
    assert_nothing_left(&env, &ctrd);
}

#[test]
fn vm_machine_crash_is_reported_and_cleaned_up() {
    need_vm();
    scenario_machine_crash_is_reported_and_cleaned_up(VesselEnv::new(None));
}

#[test]
fn host_agent_machine_crash_is_reported_and_cleaned_up() {
    scenario_machine_crash_is_reported_and_cleaned_up(VesselEnv::for_backend(Backend::HostAgent));
}

/// The shim is SIGKILLed with a task running: containerd runs `containerd-shim-vessel-v2
/// delete`, which must kill the machine, unmount and remove the sandbox's state from the state
/// file alone.
fn scenario_killed_shim_is_cleaned_up_by_delete(env: VesselEnv) {
    let v_orphan = env.id("v-orphan");
    let ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        v_orphan.as_str(),
        "sleep",
        "1000",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    assert!(
        !env.leftovers().is_empty(),
        "no sandbox state while running"
    );
    let sock = ctrd.socket().display().to_string();
    let shims: Vec<i32> = processes_mentioning(&sock)
        .iter()
        .filter(|p| p.contains("containerd-shim-vessel-v2"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(shims.len(), 1, "shims: {:?}", processes_mentioning(&sock));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || env.leftovers().is_empty()),
        "state left after the shim died: {:?}\n{}",
        env.leftovers(),
        ctrd.log_tail()
    );
    ctrd.remove_all();
    assert_nothing_left(&env, &ctrd);
}

#[test]
fn vm_killed_shim_is_cleaned_up_by_delete() {
    need_vm();
    scenario_killed_shim_is_cleaned_up_by_delete(VesselEnv::new(None));
}

#[test]
fn host_agent_killed_shim_is_cleaned_up_by_delete() {
    scenario_killed_shim_is_cleaned_up_by_delete(VesselEnv::for_backend(Backend::HostAgent));
}

/// Pod state is keyed by containerd namespace + id: the same id runs in two namespaces side by
/// side, each with its own output and exit, and deleting one leaves the other running. A second
/// container with a live id in the same namespace is refused (containerd's own check), and the
/// pod is untouched.
#[test]
fn host_agent_same_id_in_two_containerd_namespaces() {
    let env = VesselEnv::for_backend(Backend::HostAgent);
    let ctrd = env.containerd();
    const OTHER_NS: &str = "vessel-test-other";
    let tar =
        vessel_tests::containerd::build_busybox_oci_tar(&ctrd.dir().join("image-other")).unwrap();
    ctrd.import_image(OTHER_NS, &tar).unwrap();
    let run = |ns: &str, word: &str| {
        ctrd.ctr_in(
            ns,
            &[
                "run",
                "-d",
                "--runtime",
                VESSEL,
                BUSYBOX_REF,
                "twin",
                "sh",
                "-c",
                &format!("echo {word} > /tmp/who; sleep 1000"),
            ],
        )
    };
    let a = run(vessel_tests::containerd::NAMESPACE, "first");
    assert!(a.success(), "{}", describe(&a, &ctrd));
    let b = run(OTHER_NS, "second");
    assert!(b.success(), "second namespace: {}", describe(&b, &ctrd));
    let dirs = |ns: &str| {
        std::fs::read_dir(env.state_root().join(ns))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(dirs(vessel_tests::containerd::NAMESPACE), 1);
    assert_eq!(dirs(OTHER_NS), 1);
    let who = |ns: &str| {
        ctrd.ctr_in(
            ns,
            &["tasks", "exec", "--exec-id", "w", "twin", "cat", "/tmp/who"],
        )
    };
    assert!(
        eventually(Duration::from_secs(30), || who(
            vessel_tests::containerd::NAMESPACE
        )
        .stdout
            == "first\n"),
        "{:?}",
        who(vessel_tests::containerd::NAMESPACE)
    );
    assert_eq!(who(OTHER_NS).stdout, "second\n");
    // Same id again in the first namespace: refused, the running one unharmed.
    let again = run(vessel_tests::containerd::NAMESPACE, "third");
    assert!(
        !again.success(),
        "a second twin was created: {}",
        describe(&again, &ctrd)
    );
    let after = who(vessel_tests::containerd::NAMESPACE);
    assert_eq!(after.stdout, "first\n", "{after:?}");
    // Deleting one leaves the other running.
    ctrd.remove_all_in(OTHER_NS);
    assert!(eventually(Duration::from_secs(30), || dirs(OTHER_NS) == 0));
    assert_eq!(who(vessel_tests::containerd::NAMESPACE).stdout, "first\n");
    ctrd.remove_all();
    assert_nothing_left(&env, &ctrd);
}

/// containerd crashes and comes back while a task runs: the shim's event connection breaks,
/// and the TaskExit of the container that exits afterwards still reaches the new containerd
/// (the publisher reconnects and re-sends), with its exit status.
#[test]
fn host_agent_task_exit_survives_a_containerd_restart() {
    let env = VesselEnv::for_backend(Backend::HostAgent);
    let mut ctrd = env.containerd();
    let out = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        VESSEL,
        BUSYBOX_REF,
        "survivor",
        "sh",
        "-c",
        "sleep 6; exit 5",
    ]);
    assert!(out.success(), "{}", describe(&out, &ctrd));
    ctrd.crash_and_restart()
        .unwrap_or_else(|e| panic!("restarting containerd: {e:#}"));
    let mut events = ctrd.ctr_spawn(&["events"]).unwrap();
    // The exit reaches the restarted containerd as an event...
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let exit = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("/tasks/exit") && line.contains("survivor") => {
                break Some(line)
            }
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = events.kill();
    let _ = events.wait();
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "no /tasks/exit for survivor after the restart; events seen: {seen:?}\n{}",
            ctrd.log_tail()
        )
    });
    assert!(exit.contains("\"exit_status\":5"), "{exit}");
    // ...and the task is stopped with that status.
    let ls = ctrd.ctr(&["tasks", "ls"]);
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.starts_with("survivor") && l.contains("STOPPED")),
        "{}",
        ls.stdout
    );
    ctrd.remove_all();
    assert_nothing_left(&env, &ctrd);
}
