//! ExecProcess without re-executing the agent: the request's process, prepared here as raw
//! values for `crate::sys_exec`, whose vfork child joins the container and `execve`s the
//! program directly. On KVM-PVM the re-exec of the 4 MB agent as a setup child (its spawn,
//! its `execve` until `main`, reading its config) was ~1.5 s of an exec's ~2 s of emulated
//! guest kernel work. A process with a terminal still takes the setup child: its pty must be
//! opened inside the container and handed back, which a child sharing the agent's memory
//! cannot do.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nix::unistd::Pid;
use oci_spec::runtime::Process;

use super::capabilities;
use super::cgroups::Cgroup;
use super::child::rlimit_resource;
use super::namespaces::NsKind;
use super::process::{in_pid_ns, PidNs};
use super::seccomp::CompiledSeccomp;
use crate::error::RequestError;
use crate::reaper::{ExitCell, Reaper};
use crate::sys_exec::{self, DirectExec};

/// The `$PATH` a process without one searches (runc's and the old setup child's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `process` can take the direct exec (everything but a terminal).
pub fn supported(process: &Process) -> bool {
    !process.terminal().unwrap_or(false)
}

fn cstring(what: &str, s: &str) -> Result<CString, RequestError> {
    CString::new(s).map_err(|_| RequestError::invalid(format!("NUL byte in {what} {s:?}")))
}

/// The process's environment, with the agent's `GLIBC_TUNABLES` merged in (as the setup
/// child does).
fn environment(process: &Process) -> Vec<String> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if let Some(ours) = crate::fpu_workaround::inherited() {
        crate::fpu_workaround::merge_into(&mut env, &ours);
    }
    env
}

/// The process's `$PATH`, or the default.
fn search_path(env: &[String]) -> &str {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Where `execve` looks for `name`: itself when it holds a '/', else each `$PATH` entry.
pub fn candidates(name: &str, env: &[String]) -> Vec<String> {
    if name.contains('/') {
        return vec![name.to_string()];
    }
    search_path(env)
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name).display().to_string())
        .collect()
}

/// Everything of `process` the child needs; `stdio` and the namespace and cgroup fds stay
/// owned by the caller (and `held`) until the spawn returns.
fn plan(
    process: &Process,
    seccomp: Option<&CompiledSeccomp>,
    namespaces: &[(NsKind, BorrowedFd<'_>)],
    cgroup_procs: &[OwnedFd],
    stdio: &[OwnedFd; 3],
) -> Result<DirectExec, RequestError> {
    let args = process.args().clone().unwrap_or_default();
    let name = args.first().map(String::as_str).unwrap_or("");
    if name.is_empty() {
        return Err(RequestError::invalid("process.args is empty"));
    }
    let env = environment(process);
    let caps = capabilities::raw(process.capabilities().as_ref())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    let user = process.user();
    // The mount namespace last: after it, paths resolve inside the container.
    let mut ns: Vec<(NsKind, BorrowedFd<'_>)> = namespaces.to_vec();
    ns.sort_by_key(|(k, _)| NsKind::JOIN_ORDER.iter().position(|o| o == k));
    Ok(DirectExec {
        candidates: candidates(name, &env)
            .iter()
            .map(|c| cstring("executable path", c))
            .collect::<Result<_, _>>()?,
        argv: args
            .iter()
            .map(|a| cstring("argument", a))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cstring("environment entry", e))
            .collect::<Result<_, _>>()?,
        stdio: [0, 1, 2].map(|i| stdio[i].as_raw_fd()),
        namespaces: ns
            .iter()
            .map(|(k, fd)| (fd.as_raw_fd(), k.flag().bits()))
            .collect(),
        cgroup_procs: cgroup_procs.iter().map(|f| f.as_raw_fd()).collect(),
        nice: crate::priority::container_nice(),
        oom_score_adj: process
            .oom_score_adj()
            .map(|adj| cstring("oom_score_adj", &adj.to_string()))
            .transpose()?,
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()) as _, r.soft(), r.hard()))
            .collect(),
        cwd: cstring("cwd", &process.cwd().display().to_string())?,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        seccomp: seccomp.map(|s| (s.to_sock_filters(), s.flags)),
        bounding_drop: caps.bounding_drop,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        effective: caps.effective,
        permitted: caps.permitted,
        inheritable: caps.inheritable,
        ambient: caps.ambient,
        umask: user.umask().unwrap_or(0o022),
        ignored_signals: sys_exec::ignored_signals(),
    })
}

/// Starts `process` in the container (its namespaces but the pid one, which `pid_ns` gives,
/// and `cgroup`) with `stdio`, registered with the reaper. Returns once the program runs.
pub fn spawn(
    process: &Process,
    seccomp: Option<&CompiledSeccomp>,
    namespaces: &[(NsKind, BorrowedFd<'_>)],
    pid_ns: PidNs<'_>,
    cgroup: &Cgroup,
    stdio: &[OwnedFd; 3],
) -> Result<(Pid, Arc<ExitCell>), RequestError> {
    let procs: Vec<OwnedFd> = cgroup
        .procs_files()
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|e| RequestError::internal(format!("opening {}: {e}", p.display())))
        })
        .collect::<Result<_, _>>()?;
    let plan = plan(process, seccomp, namespaces, &procs, stdio)?;
    let (pid, exit, failure) = in_pid_ns(pid_ns, || {
        let mut failure = None;
        let (pid, exit) = Reaper::global().spawn_watched(|| {
            let (pid, f) = sys_exec::spawn(&plan)?;
            failure = f;
            Ok::<_, std::io::Error>(pid)
        })?;
        Ok((pid, exit, failure))
    })?;
    drop(procs);
    let Some(failure) = failure else {
        return Ok((pid, exit));
    };
    // It has exited (127); let the reaper have it before answering.
    exit.wait(Some(
        std::time::Instant::now() + std::time::Duration::from_secs(5),
    ));
    let args = process.args().clone().unwrap_or_default();
    let name = args.first().map(String::as_str).unwrap_or("");
    if failure.not_found() {
        let env = environment(process);
        let path = search_path(&env);
        return Err(RequestError::invalid(if name.contains('/') {
            format!("executable {name} not found in the container")
        } else {
            format!("executable {name:?} not found in $PATH ({path}) in the container")
        }));
    }
    Err(RequestError::internal(format!(
        "exec {name}: {}",
        vessel_protocol::errors::chain(&failure)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_a_slash_is_tried_as_is_else_along_path() {
        assert_eq!(candidates("/bin/sh", &[]), ["/bin/sh"]);
        assert_eq!(candidates("./run", &[]), ["./run"]);
        let env = vec!["A=1".to_string(), "PATH=/opt/bin::/usr/bin".to_string()];
        assert_eq!(candidates("true", &env), ["/opt/bin/true", "/usr/bin/true"]);
        assert_eq!(candidates("true", &[]).len(), 6, "the default PATH");
        assert_eq!(candidates("true", &[])[0], "/usr/local/sbin/true");
    }

    #[test]
    fn only_a_terminal_needs_the_setup_child() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert!(supported(&p));
        let t: Process = serde_json::from_value(serde_json::json!({
            "args": ["sh"], "cwd": "/", "terminal": true, "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert!(!supported(&t));
    }
}
