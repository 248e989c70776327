//! The OCI runtime CLI layer: `vessel-runc`, the real binary, driven as conmon and
//! containerd's runc shim drive runc (this test process is their subreaper, so it reaps the
//! container's holder and reads its exit status as they do), then podman itself running a
//! container with `--runtime vessel-runc`.
//!
//! One VM serves every CLI scenario: create with stdio pipes → state → start → exec
//! (detached, pid file, exit status, output) → exec with a terminal through a console
//! socket → ps → pause/resume → list → stdin reaches the init → kill → the holder exits
//! 128+9 → state → delete → nothing left; and runc's answers to bad input (unknown id, create twice, start twice,
//! exec in a created container, delete of a running one without --force).
//!
//! Needs root, /dev/kvm, `cargo build --workspace --bins`, the guest kernel + initrd
//! (`VESSEL_KERNEL`, `VESSEL_INITRD`), busybox-static, and `podman` for the second test. A
//! missing prerequisite fails the test with the reason.

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use vessel_tests::bundle::{ContainerSpec, Rootfs};
use vessel_tests::containerd::{build_busybox_oci_tar, workspace_binary, BUSYBOX_REF};
use vessel_tests::cri::{VesselConfigSpec, VesselTestConfig};

/// The CLI with a test's `--root` and vessel config.
struct Runc {
    bin: PathBuf,
    root: PathBuf,
    config: PathBuf,
}

impl Runc {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .arg("--vessel-config")
            .arg(&self.config)
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("running vessel-runc");
        eprintln!(
            "vessel-runc {} -> {:?} in {:.1} s",
            args.join(" "),
            out.status.code(),
            started.elapsed().as_secs_f64()
        );
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// runc's answer to bad input: exit status 1 and its message on stderr.
fn refused(out: &Output, message: &str, failures: &mut Vec<String>, what: &str) {
    let err = text(&out.stderr);
    if out.status.code() != Some(1) || !err.contains(message) {
        failures.push(format!(
            "{what}: want status 1 and {message:?}, got {:?}: {err}",
            out.status.code()
        ));
    }
}

fn state_of(runc: &Runc, id: &str) -> Result<serde_json::Value> {
    let out = runc.run(&["state", id]);
    if !out.status.success() {
        bail!("state {id}: {}", text(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("state JSON")
}

/// Makes this process the subreaper of its descendants (as conmon and the runc shim are):
/// a holder whose `create` exited becomes our child.
fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")
}

/// Waits (bounded) for our child `pid` to exit; its exit status.
fn reap(pid: i32, within: Duration) -> Result<i32> {
    let deadline = Instant::now() + within;
    loop {
        match waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        )? {
            WaitStatus::Exited(_, code) => return Ok(code),
            WaitStatus::Signaled(_, sig, _) => return Ok(128 + sig as i32),
            _ if Instant::now() > deadline => bail!("pid {pid} still running after {within:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn read_pid(path: &Path) -> Result<i32> {
    let t = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    t.trim().parse().with_context(|| format!("pid file {t:?}"))
}

/// Accepts one connection on a console socket and takes the pty master sent on it.
fn receive_master(listener: &UnixListener) -> Result<OwnedFd> {
    let (conn, _) = listener.accept()?;
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    bail!("no fd on the console socket")
}

/// Reads a pty master until the slave side is gone (EIO) or `within` passes.
fn read_master(master: OwnedFd, within: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(all);
    });
    rx.recv_timeout(within)
        .map(|b| text(&b))
        .unwrap_or_default()
}

/// The test's result: every failure at once, with what the runtime left in its state root
/// counted as one.
fn verdict(mut failures: Vec<String>, config: &VesselTestConfig) -> Result<()> {
    let left = config.leftovers();
    if !left.is_empty() {
        failures.push(format!("runtime state left: {left:?}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{} failures:\n{}", failures.len(), failures.join("\n"))
    }
}

fn prerequisites() -> Result<(VesselTestConfig, PathBuf)> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (KVM, mounts): run the suite as root");
    }
    let spec = VesselConfigSpec::from_env()?;
    let config = VesselTestConfig::write(&spec)?;
    let bin = workspace_binary("vessel-runc", "vessel-runc")?;
    Ok((config, bin))
}

#[test]
fn vessel_runc_drives_a_vm_container_as_conmon_does() -> Result<()> {
    let (config, bin) = prerequisites()?;
    become_subreaper()?;
    let work = tempfile::Builder::new()
        .prefix("vruncw")
        .tempdir_in("/tmp")?;
    let runc = Runc {
        bin,
        root: work.path().join("root"),
        config: config.path().to_path_buf(),
    };
    let rootfs = Rootfs::busybox()?;
    let bundle = work.path().join("bundle");
    std::fs::create_dir(&bundle)?;
    let spec = ContainerSpec::new(rootfs.path())
        .shell("echo out-line; echo err-line >&2; read x; echo got:$x; exec sleep 600");
    std::fs::write(bundle.join("config.json"), spec.to_json())?;
    let mut failures = Vec::new();
    let id = "vrunc1";

    // create, with pipes for stdio, as conmon does.
    let pid_file = work.path().join("pid");
    let (in_r, in_w) = nix::unistd::pipe()?;
    let (out_r, out_w) = nix::unistd::pipe()?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    let started = Instant::now();
    let create = runc
        .command(&["create", "--bundle"])
        .arg(&bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::from(in_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()?;
    eprintln!(
        "create: {create:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !create.success() {
        bail!("create failed: {create:?} (its error went to the container's stderr pipe)");
    }
    let pid = read_pid(&pid_file)?;
    let st = state_of(&runc, id)?;
    if st["status"] != "created" || st["pid"] != pid || st["bundle"] != bundle.to_str().unwrap() {
        failures.push(format!("state after create (pid file {pid}): {st}"));
    }
    let again = runc
        .command(&["create", "--bundle"])
        .arg(&bundle)
        .arg(id)
        .output()?;
    refused(
        &again,
        "container with given ID already exists",
        &mut failures,
        "create twice",
    );
    let early = runc.run(&["exec", id, "true"]);
    refused(
        &early,
        "cannot exec in a created container",
        &mut failures,
        "exec before start",
    );

    let start = runc.run(&["start", id]);
    if !start.status.success() {
        bail!("start: {}", text(&start.stderr));
    }
    refused(
        &runc.run(&["start", id]),
        "cannot start an already running container",
        &mut failures,
        "start twice",
    );
    refused(
        &runc.run(&["delete", id]),
        "that is not stopped: running",
        &mut failures,
        "delete running",
    );
    refused(
        &runc.run(&["state", "nosuch"]),
        "container does not exist",
        &mut failures,
        "state unknown",
    );
    refused(
        &runc.run(&["kill", "nosuch", "KILL"]),
        "container does not exist",
        &mut failures,
        "kill unknown",
    );
    let st = state_of(&runc, id)?;
    if st["status"] != "running" || st["pid"] != pid {
        failures.push(format!("state after start: {st}"));
    }

    // exec --detach: the pid file names the exec's holder, which exits with its status.
    let exec_pid = work.path().join("exec.pid");
    let (xo_r, xo_w) = nix::unistd::pipe()?;
    let exec = runc
        .command(&["exec", "--detach", "--pid-file"])
        .arg(&exec_pid)
        .args([id, "sh", "-c", "echo exec-out; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(xo_w))
        .stderr(Stdio::inherit())
        .status()?;
    if !exec.success() {
        failures.push(format!("exec --detach: {exec:?}"));
    } else {
        let code = reap(read_pid(&exec_pid)?, Duration::from_secs(300))?;
        let mut out = String::new();
        std::fs::File::from(xo_r).read_to_string(&mut out)?;
        if code != 3 || out != "exec-out\n" {
            failures.push(format!("exec: status {code}, output {out:?}"));
        }
    }

    // exec with a terminal: the master goes to our console socket, the process sees a tty.
    let console = work.path().join("console.sock");
    let listener = UnixListener::bind(&console)?;
    let process = work.path().join("process.json");
    let tty_spec = ContainerSpec::new(rootfs.path())
        .terminal(true)
        .shell("tty; exit 4");
    std::fs::write(&process, tty_spec.process_json())?;
    let mut tty_exec = runc
        .command(&["exec", "--tty", "--console-socket"])
        .arg(&console)
        .arg("--process")
        .arg(&process)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    match receive_master(&listener) {
        Ok(master) => {
            let seen = read_master(master, Duration::from_secs(300));
            let status = tty_exec.wait()?;
            if status.code() != Some(4) || !seen.contains("/dev/pts/") {
                failures.push(format!("tty exec: {status:?}, terminal showed {seen:?}"));
            }
        }
        Err(e) => {
            let _ = tty_exec.kill();
            failures.push(format!("tty exec: console socket: {e}"));
        }
    }

    // ps: JSON is host pids (the holder); the table, the guest's pids of the processes.
    let ps = runc.run(&["ps", "--format", "json", id]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap_or_default();
    if pids != [pid] {
        failures.push(format!(
            "ps json: {pids:?}, want [{pid}]: {}",
            text(&ps.stderr)
        ));
    }
    let table = text(&runc.run(&["ps", id]).stdout);
    if !table.starts_with("GUEST-PID\n") || table.lines().count() < 2 {
        failures.push(format!("ps table: {table:?}"));
    }

    // pause / resume (Docker's pause), and list.
    if !runc.run(&["pause", id]).status.success() || state_of(&runc, id)?["status"] != "paused" {
        failures.push("pause: not paused".into());
    }
    refused(
        &runc.run(&["exec", id, "true"]),
        "cannot exec in a paused container",
        &mut failures,
        "exec paused",
    );
    if !runc.run(&["resume", id]).status.success() || state_of(&runc, id)?["status"] != "running" {
        failures.push("resume: not running".into());
    }
    let list = runc.run(&["list", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
    if listed[0]["id"] != id || listed[0]["status"] != "running" {
        failures.push(format!("list: {listed}"));
    }

    // stdin reaches the init; then kill, and the holder exits as the init did.
    let mut stdin = std::fs::File::from(in_w);
    stdin.write_all(b"hello\n")?;
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    {
        nix::fcntl::fcntl(
            &out_r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let mut f = std::fs::File::from(out_r.try_clone()?);
        let mut buf = [0u8; 4096];
        while !text(&out).contains("got:hello") && Instant::now() < deadline {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    if text(&out) != "out-line\ngot:hello\n" {
        failures.push(format!("init stdout: {:?}", text(&out)));
    }
    let kill = runc.run(&["kill", id, "KILL"]);
    if !kill.status.success() {
        failures.push(format!("kill: {}", text(&kill.stderr)));
    }
    let code = reap(pid, Duration::from_secs(300))?;
    if code != 128 + 9 {
        failures.push(format!("holder exit status {code}, want 137"));
    }
    let mut err = String::new();
    std::fs::File::from(err_r).read_to_string(&mut err)?;
    if err != "err-line\n" {
        failures.push(format!("init stderr: {err:?}"));
    }
    let st = state_of(&runc, id)?;
    if st["status"] != "stopped" || st["pid"] != 0 {
        failures.push(format!("state after the end: {st}"));
    }
    refused(
        &runc.run(&["kill", id, "TERM"]),
        "container not running",
        &mut failures,
        "kill stopped",
    );
    let del = runc.run(&["delete", id]);
    if !del.status.success() {
        failures.push(format!("delete: {}", text(&del.stderr)));
    }
    refused(
        &runc.run(&["state", id]),
        "container does not exist",
        &mut failures,
        "state deleted",
    );
    if !runc.run(&["delete", "--force", id]).status.success() {
        failures.push("delete --force of a deleted container must succeed (as runc's)".into());
    }
    verdict(failures, &config)
}

#[test]
fn podman_runs_a_container_in_a_vessel_vm() -> Result<()> {
    let (config, bin) = prerequisites()?;
    let podman = Path::new("/usr/bin/podman");
    if !podman.is_file() {
        bail!("podman is missing: install it (scripts/deps.sh does)");
    }
    // podman's own storage in a temp dir: nothing of the machine's podman is touched.
    let work = tempfile::Builder::new()
        .prefix("vpodman")
        .tempdir_in("/tmp")?;
    let tar = build_busybox_oci_tar(work.path())?;
    let podman_cmd = |args: &[&str]| {
        let mut c = Command::new(podman);
        c.arg("--root")
            .arg(work.path().join("storage"))
            .arg("--runroot")
            .arg(work.path().join("run"))
            .arg("--runtime")
            .arg(&bin)
            .arg("--runtime-flag")
            .arg(format!("vessel-config={}", config.path().display()))
            .args(args)
            .stdin(Stdio::null());
        c
    };
    let load = podman_cmd(&["load", "-i"]).arg(&tar).output()?;
    if !load.status.success() {
        bail!("podman load: {}", text(&load.stderr));
    }
    let started = Instant::now();
    let run = podman_cmd(&[
        "run",
        "--rm",
        BUSYBOX_REF,
        "sh",
        "-c",
        "echo hello from $(uname -r); exit 3",
    ])
    .output()?;
    eprintln!(
        "podman run: {:?} in {:.1} s: {} {}",
        run.status.code(),
        started.elapsed().as_secs_f64(),
        text(&run.stdout),
        text(&run.stderr)
    );
    let host_kernel = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let out = text(&run.stdout);
    let mut failures = Vec::new();
    if run.status.code() != Some(3) {
        failures.push(format!("exit status {:?}, want 3", run.status.code()));
    }
    // The guest's kernel, not the host's: it ran in a VM.
    if !out.starts_with("hello from ") || out.contains(&host_kernel) {
        failures.push(format!("output {out:?} (host kernel {host_kernel})"));
    }
    let _ = podman_cmd(&["rm", "--all", "--force"]).output();
    let _ = podman_cmd(&["rmi", "--all", "--force"]).output();
    verdict(failures, &config)
}
