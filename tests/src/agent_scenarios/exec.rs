//! Scenarios of execs into a running container (without a terminal: the agent's direct
//! exec; `pty_exec` in the parent module takes the setup child).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use oci_spec::runtime::Capability;
use vessel_protocol::agent_ttrpc::AgentClient;

use super::{cap_eff, expect_code, run, spec, Running};
use crate::bundle::ContainerSpec;

/// Exec joins the running container (pid namespace, mounts), reports its own exit code.
pub fn exec_in_container(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let c = run(
        client,
        "exec",
        &spec(rootfs).args(&["/bin/sleep", "1000"]),
        false,
    )?;
    let p = spec(rootfs).shell("echo pid=$$; cat /proc/1/cmdline; echo; hostname; exit 4");
    let r = c.exec("e1", &p, false).context("ExecProcess")?;
    ensure!(r.pid > 0, "exec pid");
    let (out, _, status) = c.output("e1")?;
    ensure!(status == 4, "exec status {status}");
    ensure!(
        out.contains("/bin/sleep"),
        "exec does not see the container's pid 1: {out:?}"
    );
    ensure!(!out.contains("pid=1\n"), "exec is pid 1: {out:?}");
    ensure!(
        out.contains("vessel-test"),
        "exec is not in the container's uts namespace: {out:?}"
    );
    expect_code(
        c.exec("e1", &p, false),
        ttrpc::Code::ALREADY_EXISTS,
        "duplicate exec id",
    )?;
    exec_as_specified(&c, rootfs)?;
    for (id, args) in [
        ("e-missing", "no-such-program"),
        ("e-abs", "/no/such/program"),
    ] {
        expect_code(
            c.exec(id, &spec(rootfs).args(&[args]), false),
            ttrpc::Code::INVALID_ARGUMENT,
            "exec of a missing program",
        )?;
    }
    // A file that is not executable is not run either.
    expect_code(
        c.exec("e-noexec", &spec(rootfs).args(&["/etc/passwd"]), false),
        ttrpc::Code::INVALID_ARGUMENT,
        "exec of a non-executable file",
    )?;
    // The container's seccomp filter holds for its execs, with and without NNP.
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#;
    let sc = run(
        client,
        "exec-seccomp",
        &spec(rootfs)
            .args(&["/bin/sleep", "1000"])
            .seccomp_json(profile)?,
        false,
    )?;
    for (id, nnp) in [("s1", false), ("s2", true)] {
        let p = spec(rootfs)
            .shell(
                "mkdir /tmp/x; echo mkdir=$?; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
            )
            .no_new_privileges(nnp);
        sc.exec(id, &p, false)
            .context("ExecProcess under seccomp")?;
        let (out, err, status) = sc.output(id)?;
        ensure!(status == 0, "status {status}: {out:?} {err:?}");
        ensure!(
            out.contains("mkdir=1") && err.contains("Operation not permitted"),
            "{out:?} {err:?}"
        );
        ensure!(
            out.contains("Seccomp:\t2"),
            "no filter in the exec: {out:?}"
        );
        let want = if nnp {
            "NoNewPrivs:\t1"
        } else {
            "NoNewPrivs:\t0"
        };
        ensure!(out.contains(want), "nnp {nnp}: {out:?}");
    }
    Ok(())
}

/// An exec gets the process's user, groups, capabilities, cwd, umask, rlimits and
/// oom_score_adj, and the container's cgroup and environment rules.
fn exec_as_specified(c: &Running<'_>, rootfs: &Path) -> Result<()> {
    let base = spec(rootfs)
        .shell(
            "id -u; id -g; id -G; pwd; umask; ulimit -n; cat /proc/self/oom_score_adj; \
             grep -E '^(CapEff|CapBnd|CapAmb):' /proc/self/status; \
             [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] && echo SAME-CGROUP; \
             echo HOME=$HOME",
        )
        .user(1000, 1000, &[10, 100])
        .caps(&[Capability::NetBindService], true)
        .env("HOME=/home/test");
    let mut s = base.spec().clone();
    let mut process = s.process().clone().context("process")?;
    process.set_cwd("/tmp".into());
    let mut user = process.user().clone();
    user.set_umask(Some(0o027));
    process.set_user(user);
    process.set_oom_score_adj(Some(345));
    process.set_rlimits(Some(vec![oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
        .soft(123u64)
        .hard(456u64)
        .build()?]));
    s.set_process(Some(process));
    c.exec("e-user", &ContainerSpec::from_spec(s), false)
        .context("ExecProcess as uid 1000")?;
    let (out, err, status) = c.output("e-user")?;
    ensure!(status == 0, "status {status}: {out:?} {err:?}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() >= 11, "{out:?} {err:?}");
    ensure!(lines[0] == "1000" && lines[1] == "1000", "uid/gid {out:?}");
    for g in ["1000", "10", "100"] {
        ensure!(
            lines[2].split_whitespace().any(|x| x == g),
            "groups {out:?}"
        );
    }
    ensure!(lines[3] == "/tmp", "cwd {out:?}");
    ensure!(lines[4] == "0027", "umask {out:?}");
    ensure!(lines[5] == "123", "RLIMIT_NOFILE {out:?}");
    ensure!(lines[6] == "345", "oom_score_adj {out:?}");
    ensure!(cap_eff(&out)? == 1 << 10, "CapEff {out:?}");
    ensure!(out.contains("CapBnd:\t0000000000000400"), "CapBnd {out:?}");
    ensure!(out.contains("CapAmb:\t0000000000000400"), "CapAmb {out:?}");
    ensure!(
        out.contains("SAME-CGROUP"),
        "not in the container's cgroup: {out:?}"
    );
    ensure!(out.contains("HOME=/home/test"), "env {out:?}");
    Ok(())
}
