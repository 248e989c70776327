//! The real agent binary on this host (`--listen unix://…`), driven over ttrpc through the
//! scenarios in `vessel_tests::agent_scenarios`. Needs root (namespaces, mounts, cgroups).
//!
//! The agent binary: `$VESSEL_AGENT_BIN` if set (e.g. the static release build), else the
//! test runs `cargo build -p vessel-agent` and uses `<target>/debug/vessel-agent`.
//! Each test starts its own agent in a temp dir and stops it with SIGTERM (the agent then
//! removes what is left); the test then checks that no cgroup of its containers remains.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vessel_protocol::agent_ttrpc::AgentClient;
use vessel_tests::agent_scenarios as sc;
use vessel_tests::bundle::Rootfs;

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("agent host tests need root (namespaces, mounts, cgroups); run them as root");
    }
}

fn agent_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("VESSEL_AGENT_BIN") {
            return PathBuf::from(p);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let workspace = manifest.parent().expect("workspace root");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace.join("target"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "vessel-agent", "--bin", "vessel-agent"])
            .current_dir(workspace)
            .status()
            .expect("running cargo build -p vessel-agent");
        assert!(status.success(), "cargo build -p vessel-agent failed");
        target.join("debug/vessel-agent")
    })
    .clone()
}

/// A running agent process with its own socket and state dir.
struct HostAgent {
    child: Option<Child>,
    dir: TempDir,
    client: AgentClient,
}

impl HostAgent {
    fn start() -> HostAgent {
        Self::start_with(&[], None, &[])
    }

    /// Starts the agent behind `prefix` (e.g. `unshare --net`), with its socket and state in
    /// a temp dir under `parent` (default: the system temp dir) and `extra` arguments.
    fn start_with(prefix: &[&str], parent: Option<&Path>, extra: &[&str]) -> HostAgent {
        require_root();
        let bin = agent_binary();
        assert!(bin.exists(), "agent binary {} missing", bin.display());
        let mut builder = tempfile::Builder::new();
        builder.prefix("vessel-agent-test-");
        let dir = match parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .expect("temp dir");
        let sock = dir.path().join("agent.sock");
        let log = File::create(dir.path().join("agent.log")).expect("log file");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--log-level")
            .arg(std::env::var("VESSEL_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting vessel-agent");
        let start = Instant::now();
        let client = loop {
            if sock.exists() {
                if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
                    break AgentClient::new(c);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent did not listen on {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        HostAgent {
            child: Some(child),
            dir,
            client,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs a scenario; on failure prints the agent's log.
    fn run(&self, name: &str, f: impl FnOnce(&AgentClient) -> anyhow::Result<()>) {
        if let Err(e) = f(&self.client) {
            panic!("{name}: {e:#}\n--- agent log ---\n{}", self.log());
        }
        sc::check(&self.client).unwrap_or_else(|e| {
            panic!("{name}: agent unhealthy afterwards: {e:#}\n{}", self.log())
        });
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // This test's containers' cgroups must be gone.
        let me = sc::thread_marker();
        for base in cgroup_parents() {
            if let Ok(entries) = std::fs::read_dir(&base) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.contains(&me) && !std::thread::panicking() {
                        panic!("cgroup {} left behind", e.path().display());
                    }
                }
            }
        }
    }
}

/// The `vessel` cgroup directories the agent creates containers under (v1 per controller,
/// relative to the test process's own cgroup, which the agent inherits; or v2).
fn cgroup_parents() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/"),
        );
        let rel = path.trim_start_matches('/');
        if ctrls.is_empty() {
            let unified = Path::new("/sys/fs/cgroup/unified");
            let v2 = if unified.exists() {
                unified
            } else {
                Path::new("/sys/fs/cgroup")
            };
            out.push(v2.join(rel).join("vessel"));
            out.push(v2.join("vessel"));
        }
        for c in ctrls
            .split(',')
            .filter(|c| !c.is_empty() && !c.starts_with("name="))
        {
            out.push(Path::new("/sys/fs/cgroup").join(c).join(rel).join("vessel"));
        }
    }
    out
}

fn with_agent(name: &str, f: impl FnOnce(&AgentClient, &Path) -> anyhow::Result<()>) {
    let agent = HostAgent::start();
    let rootfs = Rootfs::busybox().expect("busybox rootfs");
    agent.run(name, |c| f(c, rootfs.path()));
}

#[test]
fn check_answers() {
    let agent = HostAgent::start();
    agent.run("check", sc::check);
}

#[test]
fn exit_code_and_streams() {
    with_agent("exit_code_and_streams", sc::exit_code_and_streams);
}

#[test]
fn pid_namespace_shows_pid_1() {
    with_agent("pid_namespace", sc::pid_namespace);
}

#[test]
fn user_and_capabilities_as_specified() {
    with_agent("user_and_capabilities", sc::user_and_capabilities);
}

#[test]
fn seccomp_errno_denies_syscalls() {
    with_agent("seccomp_errno", sc::seccomp_errno);
}

#[test]
fn seccomp_kill_kills() {
    with_agent("seccomp_kill", sc::seccomp_kill);
}

#[test]
fn sigkill_reports_137() {
    with_agent("signal_kill", sc::signal_kill);
}

#[test]
fn one_mib_of_stdout_is_intact() {
    with_agent("big_stdout", sc::big_stdout);
}

#[test]
fn output_tail_is_never_lost() {
    with_agent("tail_not_lost", sc::tail_not_lost);
}

#[test]
fn pod_members_join_the_sandbox_containers_namespaces() {
    with_agent("pod namespaces", sc::pod_namespaces);
}

/// Execs without a terminal start directly (no setup child); with one, through the setup
/// child (the pty is opened inside the container).
#[test]
fn exec_joins_the_container() {
    let agent = HostAgent::start();
    let rootfs = Rootfs::busybox().expect("busybox rootfs");
    agent.run("exec_in_container", |c| {
        sc::exec_in_container(c, rootfs.path())
    });
    let log = agent.log();
    assert!(log.contains("exec e1 (direct)"), "{log}");
    assert!(!log.contains("(setup child)"), "{log}");
}

#[test]
fn exec_with_a_pty() {
    let agent = HostAgent::start();
    let rootfs = Rootfs::busybox().expect("busybox rootfs");
    agent.run("pty_exec", |c| sc::pty_exec(c, rootfs.path()));
    let log = agent.log();
    assert!(log.contains("exec t1 (setup child)"), "{log}");
}

#[test]
fn init_with_a_pty() {
    with_agent("pty_init", sc::pty_init);
}

/// Spare setup children (started before serving; in the guest before the snapshot) serve the
/// first containers that want a new pid namespace (pid 1 there, stdio pipes, then a pty);
/// the next container is spawned as usual.
#[test]
fn spare_setup_children_serve_the_first_containers() {
    let agent = HostAgent::start_with(&[], None, &["--spare-setup-children", "2"]);
    let rootfs = Rootfs::busybox().expect("busybox rootfs");
    let claimed = |agent: &HostAgent| {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("spare setup child") && l.contains("claimed"))
            .count()
    };
    assert!(
        agent.log().contains("2 spare setup children waiting"),
        "{}",
        agent.log()
    );
    // Pid 1 of its own pid namespace, like a spawned one.
    agent.run("pid_namespace on a spare", |c| {
        sc::pid_namespace(c, rootfs.path())
    });
    assert_eq!(claimed(&agent), 1, "{}", agent.log());
    agent.run("pty_init on a spare", |c| sc::pty_init(c, rootfs.path()));
    assert_eq!(claimed(&agent), 2, "{}", agent.log());
    agent.run("stdin_pipe, spawned", |c| sc::stdin_pipe(c, rootfs.path()));
    assert_eq!(claimed(&agent), 2, "{}", agent.log());
}

#[test]
fn stdin_reaches_the_process() {
    with_agent("stdin_pipe", sc::stdin_pipe);
}

#[test]
fn memory_limit_produces_oom_event() {
    with_agent("oom_event", sc::oom_event);
}

#[test]
fn pause_resume_list_stats_update() {
    with_agent("lifecycle_ops", sc::lifecycle_ops);
}

#[test]
fn bad_input_gets_clear_errors() {
    with_agent("bad_input", sc::bad_input);
}

#[test]
fn no_zombie_or_fd_leak_when_containers_die() {
    let agent = HostAgent::start();
    let rootfs = Rootfs::busybox().expect("busybox rootfs");
    let pid = agent.pid();
    agent.run("no_leaks", |c| {
        sc::no_leaks_when_containers_die(c, rootfs.path(), pid)
    });
}

fn is_mount_point(path: &Path, mountinfo: &str) -> bool {
    let p = path.display().to_string();
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

#[test]
fn sandbox_storage_and_dns() {
    let agent = HostAgent::start();
    let rootfs = Rootfs::busybox().expect("busybox rootfs");
    let shared = agent.dir.path().join("shared");
    agent.run("sandbox_storage_and_dns", |c| {
        sc::sandbox_storage_and_dns(c, rootfs.path(), &shared)
    });
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !is_mount_point(&shared, &mountinfo),
        "DestroySandbox left {} mounted",
        shared.display()
    );
}

/// Host entropy and time in CreateSandbox (for VMs restored from a snapshot). On the host the
/// agent is not the machine's init, so the host clock is left alone.
#[test]
fn sandbox_with_entropy_and_realtime() {
    let agent = HostAgent::start();
    agent.run("sandbox_with_entropy_and_realtime", sc::sandbox_freshness);
    let log = agent.log();
    assert!(
        log.contains("32 bytes of host entropy") && log.contains("clock left alone"),
        "agent log: {log}"
    );
}

fn run_in_netns(pid: i32, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(args)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn network_interface_and_routes() {
    // The agent gets a network namespace of its own with a veth pair; nothing leaves it.
    let agent = HostAgent::start_with(&["unshare", "--net"], None, &[]);
    let pid = agent.pid();
    run_in_netns(
        pid,
        &[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ],
    );
    run_in_netns(pid, &["ip", "link", "set", "v1", "up"]);
    // Up before the agent renames it, as a guest NIC is after the warm-up (`nics_up`): the
    // kernel renames only a link that is down.
    run_in_netns(pid, &["ip", "link", "set", "v0", "up"]);
    let link = run_in_netns(pid, &["ip", "-o", "link", "show", "v0"]);
    let mac = link
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("v0 MAC")
        .to_string();
    agent.run("network_config", |c| sc::network_config(c, &mac));
    let addrs = run_in_netns(pid, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("192.0.2.10/24") && addrs.contains("2001:db8::10/64"),
        "{addrs}"
    );
    let link = run_in_netns(pid, &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let routes = run_in_netns(pid, &["ip", "route", "show"]);
    assert!(
        routes.contains("default via 192.0.2.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("198.51.100.0/24 dev eth0"), "{routes}");
}

/// The agent as PID 1 (of a new pid + mount namespace): base mounts, cgroup2, hostname, a
/// container on cgroup v2, and DestroySandbox ending PID 1 (the "reboot" of a pid
/// namespace kills its init, as the VMM's power-off would in a guest).
#[test]
fn pid1_lifecycle_in_a_pid_namespace() {
    // PID 1 mounts fresh filesystems on /tmp, /run, ... in its mount namespace: its socket
    // must live elsewhere (a clone under /tmp has its target dir there).
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let hidden = ["/tmp", "/run", "/dev", "/proc", "/sys"]
        .iter()
        .any(|m| target_tmp.starts_with(m));
    let parent = if hidden {
        Path::new("/var/tmp")
    } else {
        target_tmp
    };
    let prefix = [
        "unshare",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--propagation",
        "private",
        "--uts",
        "--net",
    ];
    let mut agent = HostAgent::start_with(&prefix, Some(parent), &[]);
    let unshare_pid = agent.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("children");
    let agent_pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("agent pid");
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "agent is not pid 1: {status}"
    );

    let mountinfo =
        std::fs::read_to_string(format!("/proc/{agent_pid}/mountinfo")).expect("mountinfo");
    for (point, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        let found = mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&point) && f.iter().skip_while(|x| **x != "-").nth(1) == Some(&fstype)
        });
        assert!(
            found,
            "PID 1 did not mount {fstype} on {point}:\n{mountinfo}"
        );
    }
    let hostname = Command::new("nsenter")
        .arg(format!("--uts=/proc/{agent_pid}/ns/uts"))
        .arg("hostname")
        .output()
        .expect("hostname");
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "vessel");

    let rootfs = Rootfs::busybox_in(parent).expect("busybox rootfs");
    agent.run("pid1 container on cgroup v2", |c| {
        sc::exit_code_and_streams(c, rootfs.path())
    });
    let client = &agent.client;
    let spec =
        vessel_tests::bundle::ContainerSpec::new(rootfs.path()).args(&["/bin/sleep", "1000"]);
    let c = sc::run(client, "pid1-left", &spec, false).expect("container");
    let id = c.id.clone();
    std::mem::forget(c); // DestroySandbox removes it.
    client
        .destroy_sandbox(
            sc::ctx(),
            &vessel_protocol::agent::DestroySandboxRequest::new(),
        )
        .expect("DestroySandbox");
    let mut child = agent.child.take().expect("child");
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "PID 1 did not power off after DestroySandbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!exit.success(), "unshare reports {exit:?}");
    for base in cgroup_parents() {
        assert!(
            !base.join(&id).exists(),
            "{} left behind",
            base.join(&id).display()
        );
    }
}

/// `--listen vsock://-1:PORT` binds a vsock listener (this host has no vsock loopback
/// transport to connect through, so the check is that the agent binds and keeps serving,
/// and that a port already taken is a clear start-up error).
#[test]
fn vsock_listener_binds() {
    require_root();
    let port = 20_000 + std::process::id() % 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let start = |log: &str| {
        Command::new(agent_binary())
            .args([
                "--listen",
                &format!("vsock://-1:{port}"),
                "--log-level",
                "info",
                "--state-dir",
            ])
            .arg(dir.path().join(log))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join(format!("{log}.log"))).expect("log"))
            .spawn()
            .expect("starting vessel-agent")
    };
    let mut first = start("a");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = dir.path().join("a.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("serving on vsock://")
    {
        assert!(
            first.try_wait().expect("try_wait").is_none(),
            "agent exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "agent did not report serving on vsock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = start("b");
    let status = second.wait().expect("wait");
    let err = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
    assert!(
        !status.success() && err.contains("vsock://-1:"),
        "second bind of port {port}: {status:?} {err}"
    );
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "first agent died"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = first.wait();
}
