//! vessel's built-in pause: what a CRI pod's sandbox container runs when the runtime asks for
//! it (`CreateContainerRequest.builtin_pause`, the runtime's default), instead of the pause
//! image's program in a full container.
//!
//! Why: the pause container only holds the pod's namespaces (and, when the pod shares its
//! pid namespace, reaps orphans as its PID 1). In a vessel VM the guest is already the pod's
//! network namespace, so all the pause container gives a pod is a new ipc and uts namespace,
//! the pod's hostname and sysctls, and a PID 1. Setting up a whole container for that — mount
//! namespace, the spec's mounts, devices, masked paths, `pivot_root`, the `execve` of `/pause`
//! read through virtio-fs — costs seconds of emulated guest kernel on a KVM-PVM host, on every
//! RunPodSandbox. CRI-O drops the infra container for the same reason (`drop_infra_ctr`).
//!
//! What the holder is: a spare setup child (already the PID 1 of a new pid namespace, already
//! in the snapshot), which makes new ipc and uts namespaces, sets the hostname, the spec's
//! sysctls and `oom_score_adj`, and on StartContainer confines itself harder than the pause container was
//! confined: not dumpable, no new privileges, no capabilities in any set, the spec's uid and
//! gid (65535 under containerd's CRI), and a seccomp filter that allows only waiting for
//! signals and children and exiting. Then, like `pause.c`: SIGINT and SIGTERM end it with
//! status 0, SIGCHLD reaps every exited child. It has no mount namespace of its own (it never
//! opens a file), so an exec into it is refused (`Container::exec`).

use std::convert::Infallible;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Process,
};

use super::child::{self, recv, send, AgentCommand, ChildConfig, ChildReport, InitConfig, Steps};
use super::namespaces::{self, NsKind};
use super::{rootfs, seccomp, ChildError};
use crate::syscall::{RealSyscall, Syscall};

/// The namespaces a built-in pause makes when the spec asks for them (in a VM the runtime asks
/// for no network namespace: the guest's is the pod's). Its pid namespace is the spare's; a
/// mount or cgroup namespace would hold nothing.
const MADE: [NsKind; 3] = [NsKind::Ipc, NsKind::Uts, NsKind::Net];

/// The only system calls the holder makes once confined (`shutdown`: of the sync socket,
/// after the filter is loaded, so that a failure to load it still reaches the agent).
const ALLOWED_SYSCALLS: [&str; 8] = [
    "shutdown",
    "rt_sigtimedwait",
    "rt_sigprocmask",
    "rt_sigreturn",
    "restart_syscall",
    "wait4",
    "exit",
    "exit_group",
];

/// The holder's seccomp profile: [`ALLOWED_SYSCALLS`], anything else fails with EPERM.
pub fn holder_seccomp_profile() -> LinuxSeccomp {
    let allow = LinuxSyscallBuilder::default()
        .names(
            ALLOWED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .expect("a syscall rule with names and an action");
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![Arch::ScmpArchX86_64])
        .syscalls(vec![allow])
        .build()
        .expect("a seccomp profile with a default action")
}

/// Checks what a built-in pause can honour of the sandbox container's init config.
pub fn check(init: &InitConfig) -> Result<(), ChildError> {
    if let Some((kind, path)) = init.join_namespaces.first() {
        return Err(ChildError::Invalid(format!(
            "a built-in pause makes the pod's namespaces; it cannot join the {kind:?} namespace {}",
            path.display()
        )));
    }
    Ok(())
}

/// The holder's life after its config arrived. Never returns on success.
pub(super) fn run(
    sync: &UnixStream,
    init: &InitConfig,
    process: &Process,
    steps: &mut Steps,
) -> Result<Infallible, ChildError> {
    check(init)?;
    // Blocked before anyone can send them, so they queue for `wait` below instead of being
    // dropped (a pid namespace's init ignores signals it has no handler for).
    let mut awaited = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        awaited.add(s);
    }
    awaited
        .thread_block()
        .map_err(|e| ChildError::sys("blocking SIGCHLD, SIGTERM and SIGINT", e))?;
    let made: Vec<NsKind> = MADE
        .into_iter()
        .filter(|k| init.new_namespaces.contains(k))
        .collect();
    namespaces::unshare_kinds(&RealSyscall, &made)?;
    if made.contains(&NsKind::Net) {
        child::loopback_up()?;
    }
    if let Some(hostname) = init.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !made.contains(&NsKind::Uts) {
            return Err(ChildError::Invalid(
                "the sandbox spec sets a hostname but has no uts namespace of its own".into(),
            ));
        }
        RealSyscall
            .sethostname(hostname)
            .map_err(|e| ChildError::sys("sethostname", e))?;
    }
    steps.done("built-in pause: namespaces, hostname");
    // The pod's sysctls, through the guest's /proc: they apply to the namespaces of the
    // writer, which are now the pod's.
    let sysctls = init.spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    for (key, value) in sysctls.into_iter().flatten() {
        rootfs::write_sysctl(&RealSyscall, Path::new("/"), key, value)?;
    }
    // CRI gives the sandbox -998: the guest's OOM killer must not end the pod's PID 1.
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| ChildError::io("oom_score_adj", e))?;
    }
    nix::unistd::setsid().map_err(|e| ChildError::sys("setsid", e))?;
    steps.done("built-in pause: sysctls, oom_score_adj");
    let ready = ChildReport::Ready {
        steps: std::mem::take(&mut steps.done),
    };
    send(sync, &ready).map_err(|e| ChildError::io("report ready", e))?;
    match recv::<AgentCommand>(sync) {
        Ok(Some(AgentCommand::Start)) => {}
        // The agent removed the container before starting it.
        _ => std::process::exit(0),
    }
    confine(process)?;
    // End of file on the sync socket is what tells the agent the process started (for a
    // container, the close-on-exec of `execve`).
    sync.shutdown(std::net::Shutdown::Both)
        .map_err(|e| ChildError::io("closing the sync socket", e))?;
    hold(&awaited)
}

/// Gives up everything the holder does not need to wait (see the module's comment): the
/// container's own privileged-to-unprivileged transition (`child::finalize`), asked for no
/// capabilities, no supplementary groups and no new privileges, with the holder's filter.
fn confine(process: &Process) -> Result<(), ChildError> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| ChildError::sys("PR_SET_DUMPABLE", e))?;
    let (filter, _) = seccomp::compile(&holder_seccomp_profile())
        .map_err(|e| ChildError::Invalid(format!("the built-in pause's seccomp filter: {e}")))?;
    let mut holder = process.clone();
    holder.set_capabilities(None);
    holder.set_no_new_privileges(Some(true));
    let mut user = holder.user().clone();
    user.set_additional_gids(None);
    holder.set_user(user);
    let cfg = ChildConfig {
        process: holder,
        seccomp: Some(filter),
        init: None,
        join: Vec::new(),
        wait_for_start: false,
        // It never runs: it may keep the agent's priority.
        nice: None,
    };
    child::finalize(&cfg, false, Path::new("/"))
}

/// `pause.c`'s loop: reap on SIGCHLD, end on SIGINT or SIGTERM.
fn hold(awaited: &SigSet) -> ! {
    loop {
        match awaited.wait() {
            Ok(Signal::SIGINT | Signal::SIGTERM) => std::process::exit(0),
            Ok(_) => reap_all(),
            Err(_) => {}
        }
    }
}

fn reap_all() {
    // Until no exited child is left (signals coalesce: one SIGCHLD may stand for many).
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_allows_only_waiting_and_exiting() {
        let (filter, unknown) = seccomp::compile(&holder_seccomp_profile()).unwrap();
        assert!(unknown.is_empty(), "unknown syscalls {unknown:?}");
        // Every allowed name is a real x86_64 syscall; an open or a write is not allowed.
        for name in ALLOWED_SYSCALLS {
            assert!(seccomp::syscall_number(name).is_some(), "{name}");
        }
        for denied in ["openat", "write", "execve", "ptrace", "socket", "mount"] {
            assert!(!ALLOWED_SYSCALLS.contains(&denied), "{denied}");
        }
        assert!(!filter.to_sock_filters().is_empty());
    }

    #[test]
    fn joining_a_namespace_is_refused() {
        let init = InitConfig {
            spec: oci_spec::runtime::Spec::default(),
            rootfs: "/".into(),
            resolv_conf: None,
            cgroup_style: super::super::mounts::CgroupMountStyle::V2 {
                root_flags: String::new(),
            },
            new_namespaces: vec![NsKind::Ipc, NsKind::Uts],
            join_namespaces: vec![(NsKind::Net, "/proc/1/ns/net".into())],
            builtin_pause: true,
        };
        let err = check(&init).unwrap_err().to_string();
        assert!(err.contains("cannot join the Net namespace"), "{err}");
        let ok = InitConfig {
            join_namespaces: Vec::new(),
            ..init
        };
        assert!(check(&ok).is_ok());
    }
}
