//! Agent scenarios written against an `AgentClient`, so the same checks run against the
//! agent on the host (unix socket) and, later, inside the VM (vsock). Each takes the client
//! and the rootfs path *as the agent sees it*.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use oci_spec::runtime::Capability;
use vessel_protocol::agent::*;
use vessel_protocol::agent_ttrpc::AgentClient;

use crate::bundle::ContainerSpec;

mod client;
mod exec;
mod pod;
mod sandbox;
pub use client::*;
pub use exec::*;
pub use pod::*;
pub use sandbox::*;

fn spec(rootfs: &Path) -> ContainerSpec {
    ContainerSpec::new(rootfs)
}

/// `exit 7` reports 7; stdout and stderr are kept apart.
pub fn exit_code_and_streams(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "exit",
        &spec(rootfs).shell("echo out; echo err >&2; exit 7"),
        false,
    )?;
    let (out, err, status) = c.output("")?;
    ensure!(
        out == "out\n" && err == "err\n",
        "stdout {out:?} stderr {err:?}"
    );
    ensure!(status == 7, "exit status {status}, want 7");
    check(client)
}

/// The container has its own pid namespace: the shell is pid 1.
pub fn pid_namespace(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "pidns",
        &spec(rootfs).shell("echo $$; readlink /proc/self; hostname"),
        false,
    )?;
    let (out, _, status) = c.output("")?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(status == 0, "status {status}");
    ensure!(
        lines.first() == Some(&"1"),
        "shell pid in the container is {:?}, want 1 (output {out:?})",
        lines.first()
    );
    let self_pid: u32 = lines
        .get(1)
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| anyhow!("readlink /proc/self: {out:?}"))?;
    ensure!(
        self_pid < 10,
        "/proc/self is {self_pid}: /proc is not the container's"
    );
    ensure!(
        lines.get(2) == Some(&"vessel-test"),
        "hostname {:?}",
        lines.get(2)
    );
    ensure!(
        c.pid > 1,
        "StartContainer pid {} is not the agent-side pid",
        c.pid
    );
    Ok(())
}

fn cap_eff(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .ok_or_else(|| anyhow!("no CapEff in {status:?}"))?;
    Ok(u64::from_str_radix(
        line.trim_start_matches("CapEff:").trim(),
        16,
    )?)
}

/// uid/gid/additional gids and capabilities are as specified.
pub fn user_and_capabilities(client: &AgentClient, rootfs: &Path) -> Result<()> {
    // Root with two capabilities: CAP_CHOWN (0) and CAP_KILL (5).
    let s = spec(rootfs)
        .shell("cat /proc/self/status")
        .caps(&[Capability::Chown, Capability::Kill], false);
    let c = run(client, "caps-root", &s, false)?;
    let (out, _, status) = c.output("")?;
    ensure!(status == 0, "status {status}");
    ensure!(
        cap_eff(&out)? == 0x21,
        "root CapEff {:#x}, want 0x21",
        cap_eff(&out)?
    );

    // uid 1000 keeps only ambient capabilities across exec: CAP_NET_BIND_SERVICE (10).
    let s = spec(rootfs)
        .shell("id -u; id -g; id -G; cat /proc/self/status")
        .user(1000, 1000, &[10, 100])
        .caps(&[Capability::NetBindService], true);
    let c = run(client, "caps-user", &s, false)?;
    let (out, err, status) = c.output("")?;
    ensure!(status == 0, "status {status}, stderr {err:?}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.first() == Some(&"1000") && lines.get(1) == Some(&"1000"),
        "uid/gid {:?}",
        &lines[..2.min(lines.len())]
    );
    let groups: Vec<&str> = lines
        .get(2)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    for g in ["1000", "10", "100"] {
        ensure!(groups.contains(&g), "groups {groups:?} lack {g}");
    }
    ensure!(
        cap_eff(&out)? == 1 << 10,
        "user CapEff {:#x}, want 0x400",
        cap_eff(&out)?
    );
    Ok(())
}

/// ERRNO: a denied mkdir fails with EPERM (default errnoRet) while the rest works; a custom
/// errnoRet is returned as given.
pub fn seccomp_errno(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"syscalls":[
        {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"},
        {"names":["rmdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
        {"names":["some_syscall_that_does_not_exist"],"action":"SCMP_ACT_ERRNO"}]}"#;
    for nnp in [true, false] {
        let s = spec(rootfs)
            .shell("mkdir /tmp/x; echo mkdir=$?; rmdir /tmp; echo rmdir=$?; echo ok > /tmp/file && cat /tmp/file")
            .no_new_privileges(nnp)
            .seccomp_json(profile)?;
        let c = run(client, "seccomp-errno", &s, false)?;
        let (out, err, status) = c.output("")?;
        ensure!(status == 0, "status {status} (nnp {nnp}); stderr {err:?}");
        ensure!(
            out.contains("mkdir=1") && out.contains("rmdir=1") && out.contains("ok\n"),
            "stdout {out:?}"
        );
        ensure!(
            err.contains("Operation not permitted"),
            "mkdir error is not EPERM: {err:?}"
        );
        ensure!(
            err.contains("Function not implemented"),
            "rmdir error is not ENOSYS (38): {err:?}"
        );
    }
    Ok(())
}

/// KILL_PROCESS: the process dies of SIGSYS (128 + 31).
pub fn seccomp_kill(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["uname"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#;
    let s = spec(rootfs)
        .args(&["/bin/uname", "-a"])
        .seccomp_json(profile)?;
    let c = run(client, "seccomp-kill", &s, false)?;
    let (out, _, status) = c.output("")?;
    ensure!(
        status == 128 + libc::SIGSYS,
        "status {status}, want {} (SIGSYS); stdout {out:?}",
        128 + libc::SIGSYS
    );
    ensure!(out.is_empty(), "uname printed {out:?} despite the filter");
    Ok(())
}

/// SIGKILL through SignalProcess → 137.
pub fn signal_kill(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "sigkill",
        &spec(rootfs).args(&["/bin/sleep", "1000"]),
        false,
    )?;
    c.signal("", libc::SIGKILL, false)
        .context("SignalProcess")?;
    let status = c.wait("")?;
    ensure!(status == 137, "status {status}, want 137");
    Ok(())
}

/// 1 MiB+ of stdout arrives byte for byte.
pub fn big_stdout(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "bigout",
        &spec(rootfs).args(&["seq", "1", "170000"]),
        false,
    )?;
    let out = c.read_all("", false)?;
    let expected: String = (1..=170_000).map(|i| format!("{i}\n")).collect();
    ensure!(out.len() >= 1 << 20, "only {} bytes", out.len());
    ensure!(
        out == expected.as_bytes(),
        "stdout differs from seq 1 170000 ({} vs {} bytes)",
        out.len(),
        expected.len()
    );
    ensure!(c.wait("")? == 0, "seq failed");
    Ok(())
}

/// Output written right before exit is readable after the exit is reported.
pub fn tail_not_lost(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let script = "head -c 60000 /dev/zero | tr '\\0' x; echo; echo LAST-LINE-OUT; echo LAST-LINE-ERR >&2; exit 3";
    let c = run(client, "tail", &spec(rootfs).shell(script), false)?;
    ensure!(c.wait("")? == 3, "status");
    let out = String::from_utf8(c.read_all("", false)?)?;
    let err = String::from_utf8(c.read_all("", true)?)?;
    ensure!(
        out.len() == 60000 + 1 + 14,
        "stdout has {} bytes",
        out.len()
    );
    ensure!(
        out.ends_with("\nLAST-LINE-OUT\n"),
        "stdout tail {:?}",
        &out[out.len().saturating_sub(30)..]
    );
    ensure!(err == "LAST-LINE-ERR\n", "stderr {err:?}");
    Ok(())
}

/// A container whose init has a terminal: the pty is the container's own (its name resolves
/// in the container's /dev/pts) and is bound at /dev/console, as with runc.
pub fn pty_init(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let p = spec(rootfs)
        .shell(
            "T=$(tty) && [ -c \"$T\" ] && echo VISIBLE-$T; [ -c /dev/console ] && echo CONSOLE; \
             read line; echo GOT-$line",
        )
        .terminal(true);
    let c = run(client, "ptyinit", &p, true).context("a container with a terminal")?;
    c.write_stdin("", b"hi\n")?;
    let (out, err, status) = c.output("")?;
    ensure!(status == 0, "status {status}: {out:?}");
    ensure!(err.is_empty(), "a terminal has no separate stderr: {err:?}");
    ensure!(
        out.contains("VISIBLE-/dev/pts/"),
        "tty not visible: {out:?}"
    );
    ensure!(out.contains("CONSOLE"), "/dev/console missing: {out:?}");
    ensure!(
        out.contains("GOT-hi"),
        "stdin through the pty lost: {out:?}"
    );
    Ok(())
}

/// An exec with a pty: stdin/stdout on the terminal, window size set and resized.
pub fn pty_exec(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "pty",
        &spec(rootfs).args(&["/bin/sleep", "1000"]),
        false,
    )?;
    let p = spec(rootfs)
        .shell(
            "[ -t 0 ] && [ -t 1 ] && echo IS-A-TTY; T=$(tty) && [ -c \"$T\" ] && echo VISIBLE-$T; \
             read line; stty size; echo GOT-$line",
        )
        .terminal(true);
    c.exec("t1", &p, true)
        .context("ExecProcess with terminal")?;
    let mut req = TtyWinResizeRequest::new();
    req.container_id = c.id.clone();
    req.exec_id = "t1".into();
    req.rows = 40;
    req.cols = 123;
    client.tty_win_resize(ctx(), &req).context("TtyWinResize")?;
    c.write_stdin("t1", b"hello\n")?;
    let (out, err, status) = c.output("t1")?;
    ensure!(status == 0, "status {status}: {out:?}");
    ensure!(err.is_empty(), "a terminal has no separate stderr: {err:?}");
    ensure!(out.contains("IS-A-TTY"), "not a tty: {out:?}");
    // The pty comes from the container's own /dev/pts, so its name resolves inside it.
    ensure!(
        out.contains("VISIBLE-/dev/pts/"),
        "the terminal's device is not visible in the container: {out:?}"
    );
    ensure!(out.contains("40 123"), "window size not applied: {out:?}");
    ensure!(
        out.contains("GOT-hello"),
        "stdin through the pty lost: {out:?}"
    );
    Ok(())
}

/// Stdin pipe: data written reaches the process; CloseStdin gives it end of file.
pub fn stdin_pipe(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(client, "stdin", &spec(rootfs).args(&["/bin/cat"]), true)?;
    let chunk: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // Write and read concurrently: 200 kB does not fit in a pipe.
    let reader = std::thread::scope(|s| {
        let h = s.spawn(|| c.read_all("", false));
        c.write_stdin("", &chunk)?;
        c.write_stdin("", b"END\n")?;
        c.close_stdin("")?;
        h.join().map_err(|_| anyhow!("reader panicked"))?
    })?;
    let mut expected = chunk.clone();
    expected.extend_from_slice(b"END\n");
    ensure!(
        reader == expected,
        "cat echoed {} bytes, want {}",
        reader.len(),
        expected.len()
    );
    ensure!(c.wait("")? == 0, "cat status");
    Ok(())
}

/// A memory limit makes the kernel OOM-kill the container; GetOOMEvent names it.
pub fn oom_event(client: &AgentClient, rootfs: &Path) -> Result<()> {
    oom_event_with_limit(client, rootfs, 32 << 20)
}

/// [`oom_event`] with another memory limit: in a guest on KVM-PVM every page fault and the
/// kernel's reclaim before the OOM kill are emulated, minutes for 32 MiB.
pub fn oom_event_with_limit(client: &AgentClient, rootfs: &Path, limit: i64) -> Result<()> {
    let s = spec(rootfs)
        .shell("x=0123456789abcdef; while true; do x=$x$x; done")
        .memory_limit(limit);
    let c = run(client, "oom", &s, false)?;
    let status = c.wait("")?;
    ensure!(status == 137, "status {status}, want 137 (OOM kill)");
    let start = Instant::now();
    loop {
        ensure!(
            start.elapsed() < scenario_timeout(),
            "no OOM event for {}",
            c.id
        );
        let ev = client
            .get_oom_event(ctx(), &GetOOMEventRequest::new())
            .context("GetOOMEvent")?;
        if ev.container_id == c.id {
            break;
        }
    }
    let mut req = StatsContainerRequest::new();
    req.container_id = c.id.clone();
    let st = client
        .stats_container(ctx(), &req)
        .context("StatsContainer")?;
    ensure!(
        st.memory.oom_kill_events >= 1,
        "stats report {} OOM kills",
        st.memory.oom_kill_events
    );
    ensure!(
        st.memory.limit_bytes == limit as u64,
        "stats memory limit {}",
        st.memory.limit_bytes
    );
    Ok(())
}

/// Pause/resume, list processes, stats, update.
pub fn lifecycle_ops(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "ops",
        &spec(rootfs).shell("sleep 1000 & sleep 1000 & wait"),
        false,
    )?;
    let mut lr = ListProcessesRequest::new();
    lr.container_id = c.id.clone();
    let start = Instant::now();
    loop {
        let pids = client
            .list_processes(ctx(), &lr)
            .context("ListProcesses")?
            .pids;
        if pids.len() == 3 && pids.contains(&c.pid) {
            break;
        }
        ensure!(
            start.elapsed() < scenario_timeout(),
            "ListProcesses {pids:?}, want 3 with {}",
            c.pid
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cr = ContainerRequest::new();
    cr.container_id = c.id.clone();
    client
        .pause_container(ctx(), &cr)
        .context("PauseContainer")?;
    let state = std::fs::read_to_string(format!("/proc/{}/stat", c.pid)).unwrap_or_default();
    client
        .resume_container(ctx(), &cr)
        .context("ResumeContainer")?;
    if !state.is_empty() {
        // Frozen tasks sleep in the freezer (state D or S), never R.
        ensure!(
            !state.contains(") R "),
            "paused process is running: {state}"
        );
    }
    let mut ur = UpdateContainerRequest::new();
    ur.container_id = c.id.clone();
    ur.resources = br#"{"pids":{"limit":50},"memory":{"limit":67108864,"swap":67108864}}"#.to_vec();
    client
        .update_container(ctx(), &ur)
        .context("UpdateContainer")?;
    let mut sr = StatsContainerRequest::new();
    sr.container_id = c.id.clone();
    let st = client
        .stats_container(ctx(), &sr)
        .context("StatsContainer")?;
    ensure!(
        st.pids.current == 3 && st.pids.limit == 50,
        "pids stats {:?}",
        st.pids
    );
    ensure!(
        st.memory.limit_bytes == 64 << 20 && st.memory.usage_bytes > 0,
        "memory stats {:?}",
        st.memory
    );
    ur.resources = b"{not json".to_vec();
    expect_code(
        client.update_container(ctx(), &ur),
        ttrpc::Code::INVALID_ARGUMENT,
        "malformed resources",
    )?;
    c.signal("", libc::SIGKILL, true)
        .context("SignalProcess all")?;
    ensure!(c.wait("")? == 137, "init not killed by signal-all");
    Ok(())
}

/// Bad requests get clear errors with the right codes, and the agent keeps serving.
pub fn bad_input(client: &AgentClient, rootfs: &Path) -> Result<()> {
    use ttrpc::Code;
    let id = unique_id("bad");
    let mut req = CreateContainerRequest::new();
    req.container_id = id.clone();
    req.oci_spec = b"{this is not json".to_vec();
    expect_code(
        client.create_container(ctx(), &req),
        Code::INVALID_ARGUMENT,
        "malformed spec",
    )?;
    check(client)?;

    req.container_id = "../escape".into();
    req.oci_spec = spec(rootfs).to_json();
    expect_code(
        client.create_container(ctx(), &req),
        Code::INVALID_ARGUMENT,
        "bad container id",
    )?;
    check(client)?;

    let mut start = StartContainerRequest::new();
    start.container_id = "no-such-container".into();
    expect_code(
        client.start_container(ctx(), &start),
        Code::NOT_FOUND,
        "unknown container",
    )?;
    let mut wait = WaitProcessRequest::new();
    wait.container_id = "no-such-container".into();
    expect_code(
        client.wait_process(ctx(), &wait),
        Code::NOT_FOUND,
        "unknown container wait",
    )?;
    check(client)?;

    let bad_seccomp = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
        "args":[{"index":7,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#;
    let s = spec(rootfs).shell("true").seccomp_json(bad_seccomp)?;
    let msg = expect_code(
        create(client, &unique_id("badsc"), &s, false),
        Code::INVALID_ARGUMENT,
        "bad seccomp",
    )?;
    ensure!(msg.contains("seccomp"), "error does not say seccomp: {msg}");
    check(client)?;

    let missing = spec(rootfs).args(&["/bin/no-such-binary"]);
    let msg = expect_code(
        create(client, &unique_id("nobin"), &missing, false),
        Code::INVALID_ARGUMENT,
        "missing binary in create",
    )?;
    ensure!(
        msg.contains("no-such-binary"),
        "error does not name the binary: {msg}"
    );
    check(client)?;

    // Duplicate create.
    let c = run(
        client,
        "dup",
        &spec(rootfs).args(&["/bin/sleep", "1000"]),
        false,
    )?;
    expect_code(
        create(client, &c.id, &spec(rootfs).shell("true"), false),
        Code::ALREADY_EXISTS,
        "second create",
    )?;
    check(client)?;
    // Missing binary in exec: a prompt error (the request has a client deadline; a hang fails).
    let t = Instant::now();
    expect_code(
        c.exec("nobin", &spec(rootfs).args(&["no-such-binary"]), false),
        Code::INVALID_ARGUMENT,
        "missing binary in exec",
    )?;
    ensure!(
        t.elapsed() < request_timeout(),
        "exec of a missing binary took {:?}",
        t.elapsed()
    );
    expect_code(
        c.exec("", &spec(rootfs).shell("true"), false),
        Code::INVALID_ARGUMENT,
        "empty exec id",
    )?;
    expect_code(
        c.signal("", 12345, false),
        Code::INVALID_ARGUMENT,
        "bad signal",
    )?;
    let mut rd = ReadStreamRequest::new();
    rd.container_id = c.id.clone();
    rd.exec_id = "nope".into();
    expect_code(
        client.read_stdout(ctx(), &rd),
        Code::NOT_FOUND,
        "unknown exec id",
    )?;
    check(client)?;

    // Exec into a stopped container.
    let stopped = run(client, "stopped", &spec(rootfs).shell("exit 0"), false)?;
    stopped.wait("")?;
    expect_code(
        stopped.exec("late", &spec(rootfs).shell("true"), false),
        Code::FAILED_PRECONDITION,
        "exec into stopped",
    )?;
    let mut again = StartContainerRequest::new();
    again.container_id = stopped.id.clone();
    expect_code(
        client.start_container(ctx(), &again),
        Code::FAILED_PRECONDITION,
        "second start",
    )?;
    check(client)
}

/// Count of the agent's open fds and of its zombie children.
pub fn agent_resources(agent_pid: i32) -> Result<(usize, usize)> {
    let fds = std::fs::read_dir(format!("/proc/{agent_pid}/fd"))?.count();
    let mut zombies = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<i32>().ok()));
        if state == Some("Z") && ppid == Some(agent_pid) {
            zombies += 1;
        }
    }
    Ok((fds, zombies))
}

/// Containers that die in the middle of requests (and failed creates/execs) leave no zombie
/// and no descriptor behind in the agent. Host only: needs the agent's pid.
pub fn no_leaks_when_containers_die(
    client: &AgentClient,
    rootfs: &Path,
    agent_pid: i32,
) -> Result<()> {
    check(client)?;
    let before = agent_resources(agent_pid)?;
    for round in 0..3 {
        let c = run(
            client,
            "dies",
            &spec(rootfs).shell("echo started; sleep 1000"),
            true,
        )?;
        std::thread::scope(|s| -> Result<()> {
            let waiter = s.spawn(|| c.wait(""));
            let reader = s.spawn(|| c.read_all("", false));
            let exec = c.exec("x", &spec(rootfs).args(&["/bin/sleep", "1000"]), false);
            ensure!(exec.is_ok(), "exec: {exec:?}");
            std::thread::sleep(Duration::from_millis(50));
            // The container's init dies under the agent (not through the API).
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let status = waiter.join().map_err(|_| anyhow!("waiter panicked"))??;
            ensure!(status == 137, "round {round}: status {status}");
            let out = reader.join().map_err(|_| anyhow!("reader panicked"))??;
            ensure!(out == b"started\n", "round {round}: stdout {out:?}");
            Ok(())
        })?;
        let exec_status = c.wait("x")?;
        ensure!(
            exec_status == 137,
            "exec in a dead pid namespace: status {exec_status}"
        );
        let _ = create(
            client,
            &unique_id("leak-nobin"),
            &spec(rootfs).args(&["/nope"]),
            true,
        );
        let _ = c.exec("y", &spec(rootfs).args(&["/nope"]), true);
        drop(c);
    }
    check(client)?;
    let start = Instant::now();
    loop {
        let after = agent_resources(agent_pid)?;
        if after == before {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "agent (fds, zombies) before {before:?}, after {after:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
