//! The container-side half of process creation. The agent forks and re-executes itself
//! (`vessel-agent __child`) so that all of this runs in a fresh single-threaded process:
//! namespaces, rootfs, rlimits, then — after the agent says "start" — user, capabilities,
//! seccomp and `execve` of the container's program.
//!
//! Descriptors: 0-2 stdio, 3 the sync socket to the agent, 4.. namespace fds (exec).
//! Protocol on the sync socket (length-prefixed JSON): agent → [`ChildConfig`]; for a process
//! with a terminal, child → [`ChildReport::Console`] carrying the pty master (SCM_RIGHTS) it
//! opened inside the container; child → [`ChildReport::Ready`] once set up (only when
//! `wait_for_start`); agent → `Start`; then either end of file (the socket is close-on-exec:
//! `execve` succeeded) or [`ChildReport::Failed`].
//!
//! A *spare* child (`vessel-agent __child spare`, see `process.rs`) is started before it is
//! needed, with /dev/null as stdio, and first waits for [`AgentCommand::Claim`] carrying the
//! container's stdio (SCM_RIGHTS); from there on it is like any other.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use vessel_protocol::errors::chain;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process, Spec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::capabilities;
use super::mounts::CgroupMountStyle;
use super::namespaces::{self, NsKind};
use super::rootfs::{self, RootfsExtras};
use super::seccomp::CompiledSeccomp;
use super::ChildError;
use crate::sys;
use crate::syscall::{RealSyscall, Syscall};

/// argv[1] that selects the child entry point.
pub const CHILD_ARG: &str = "__child";
/// argv[2] of a spare child: wait for [`AgentCommand::Claim`] first.
pub const SPARE_ARG: &str = "spare";
pub const SYNC_FD: RawFd = 3;
pub const FIRST_NS_FD: RawFd = 4;
const MAX_FRAME: u32 = 16 << 20;

/// Everything the child needs, sent by the agent.
#[derive(Serialize, Deserialize)]
pub struct ChildConfig {
    pub process: Process,
    pub seccomp: Option<CompiledSeccomp>,
    /// Set for a container's init process; `None` for an exec.
    pub init: Option<InitConfig>,
    /// Exec: the container's namespaces, passed as fds FIRST_NS_FD + i.
    pub join: Vec<NsKind>,
    /// Report Ready and wait for Start before the final steps (CreateContainer).
    pub wait_for_start: bool,
    /// The nice value to take before `execve` (`crate::priority`); `None`: keep the agent's.
    #[serde(default)]
    pub nice: Option<i32>,
}

#[derive(Serialize, Deserialize)]
pub struct InitConfig {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub cgroup_style: CgroupMountStyle,
    /// Namespaces to create (the pid namespace is created by the fork).
    pub new_namespaces: Vec<NsKind>,
    /// Namespaces to join by path (not pid).
    pub join_namespaces: Vec<(NsKind, PathBuf)>,
    /// The pod's sandbox container runs vessel's built-in pause (`super::builtin_pause`)
    /// instead of the spec's program in a full container.
    #[serde(default)]
    pub builtin_pause: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ChildReport {
    /// Sent with the pty master attached (SCM_RIGHTS).
    Console,
    /// Set up; with what its steps cost, for the agent's debug log: on an emulating host
    /// (KVM-PVM) a create takes seconds and these say where.
    Ready { steps: Vec<StepCost> },
    /// Setup failed; `invalid`: the request asked for something impossible (e.g. a missing
    /// executable) rather than the agent failing.
    Failed { invalid: bool, message: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AgentCommand {
    Start,
    /// To a spare child: this container is yours; its stdio (3 fds) rides along.
    Claim,
}

/// Sends one length-prefixed JSON message.
pub fn send<T: Serialize>(mut sock: &UnixStream, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg)?;
    let len =
        u32::try_from(body.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    sock.write_all(&len.to_le_bytes())?;
    sock.write_all(&body)
}

/// Sends one message with `fd` attached to its first byte.
pub fn send_with_fd<T: Serialize>(sock: &UnixStream, msg: &T, fd: &OwnedFd) -> io::Result<()> {
    send_with_fds(sock, msg, &[fd.as_fd()])
}

/// Sends one message with `fds` attached to its first byte.
pub fn send_with_fds<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let body = serde_json::to_vec(msg)?;
    let len =
        u32::try_from(body.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let header = len.to_le_bytes();
    let fds: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    // The fd rides on the 4-byte header; the body follows as plain bytes.
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&header)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    if sent != header.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    let mut w = sock;
    w.write_all(&body)
}

/// Receives one message and the descriptor that came with it, if any (close-on-exec).
pub fn recv_with_fd<T: DeserializeOwned>(
    sock: &UnixStream,
) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    Ok(recv_with_fds(sock, 1)?.map(|(msg, fds)| (msg, fds.into_iter().next())))
}

/// Receives one message and up to `MAX_FDS` descriptors that came with it (close-on-exec;
/// the first `keep` are returned, any others closed).
fn recv_with_fds<T: DeserializeOwned>(
    sock: &UnixStream,
    keep: usize,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    const MAX_FDS: usize = 3;
    let mut header = [0u8; 4];
    let mut got = 0;
    let mut kept = Vec::new();
    while got < header.len() {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut header[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    let owned = sys::adopt_received_fd(raw);
                    // Any beyond `keep` is closed by dropping it.
                    if kept.len() < keep {
                        kept.push(owned);
                    }
                }
            }
        }
        if msg.bytes == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += msg.bytes;
    }
    let len = u32::from_le_bytes(header);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sync message too large",
        ));
    }
    let mut body = vec![0u8; len as usize];
    let mut r = sock;
    r.read_exact(&mut body)?;
    Ok(Some((serde_json::from_slice(&body)?, kept)))
}

/// Receives one message; `Ok(None)` on end of file before a message starts.
pub fn recv<T: DeserializeOwned>(mut sock: &UnixStream) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match sock.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sync message too large",
        ));
    }
    let mut body = vec![0u8; len as usize];
    sock.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Entry point of `vessel-agent __child [spare]`. Never returns.
pub fn child_main(spare: bool) -> ! {
    let sync = match sys::take_inherited_fd(SYNC_FD) {
        Ok(fd) => UnixStream::from(fd),
        Err(_) => std::process::exit(126),
    };
    if spare {
        warm_config_path();
        match wait_for_claim(&sync) {
            Ok(true) => {}
            // The agent went away or removed the spare: nothing to do.
            Ok(false) => std::process::exit(0),
            Err(e) => {
                let _ = send(
                    &sync,
                    &ChildReport::Failed {
                        invalid: false,
                        message: format!("spare setup child: {e}", e = chain(&e)),
                    },
                );
                std::process::exit(127)
            }
        }
    }
    let err = match run(&sync, spare) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let invalid = matches!(err, ChildError::Invalid(_) | ChildError::NotFound(_));
    let _ = send(
        &sync,
        &ChildReport::Failed {
            invalid,
            message: chain(&err),
        },
    );
    std::process::exit(127)
}

/// Before a spare waits: a config round trip through JSON, so the code and heap pages the
/// real config's parsing touches are mapped in the snapshot (each first touch is a page fault,
/// ~5 ms on KVM-PVM, where the guest kernel is emulated).
fn warm_config_path() {
    let spec = Spec::default();
    let cfg = ChildConfig {
        process: spec.process().clone().unwrap_or_default(),
        seccomp: None,
        init: Some(InitConfig {
            spec,
            rootfs: PathBuf::from("/"),
            resolv_conf: None,
            cgroup_style: CgroupMountStyle::V2 {
                root_flags: String::new(),
            },
            new_namespaces: Vec::new(),
            join_namespaces: Vec::new(),
            builtin_pause: false,
        }),
        join: Vec::new(),
        wait_for_start: true,
        nice: Some(0),
    };
    if let Ok(bytes) = serde_json::to_vec(&cfg) {
        let _ = serde_json::from_slice::<ChildConfig>(&bytes);
    }
}

/// A spare child's wait: `Ok(false)` if the agent closed the socket instead of claiming it;
/// on a claim the container's stdio becomes fds 0-2.
fn wait_for_claim(sync: &UnixStream) -> io::Result<bool> {
    let (cmd, stdio) = match recv_with_fds::<AgentCommand>(sync, 3)? {
        None => return Ok(false),
        Some(got) => got,
    };
    if !matches!(cmd, AgentCommand::Claim) || stdio.len() != 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected a claim with 3 fds, got {cmd:?} with {}",
                stdio.len()
            ),
        ));
    }
    nix::unistd::dup2_stdin(&stdio[0])?;
    nix::unistd::dup2_stdout(&stdio[1])?;
    nix::unistd::dup2_stderr(&stdio[2])?;
    Ok(true)
}

fn run(sync: &UnixStream, spare: bool) -> Result<Infallible, ChildError> {
    let mut steps = Steps::new(spare);
    let cfg: ChildConfig = recv(sync)
        .map_err(|e| ChildError::io("read config", e))?
        .ok_or_else(|| ChildError::Invalid("agent closed the sync socket".into()))?;
    steps.done("config received");
    if let Some(init) = cfg.init.as_ref().filter(|i| i.builtin_pause) {
        return super::builtin_pause::run(sync, init, &cfg.process, &mut steps);
    }
    let terminal = cfg.process.terminal().unwrap_or(false);
    let console = match &cfg.init {
        Some(init) => setup_init(init, terminal, &mut steps)?,
        None => {
            for (i, kind) in cfg.join.iter().enumerate() {
                let fd = sys::take_inherited_fd(FIRST_NS_FD + i as RawFd)
                    .map_err(|e| ChildError::io("namespace fd", e))?;
                namespaces::join(&RealSyscall, *kind, fd)?;
            }
            // setns into the mount namespace moved us to its root: the pty comes from the
            // container's /dev/pts.
            if terminal {
                Some(super::console::open_console(&RealSyscall, false)?)
            } else {
                None
            }
        }
    };
    if let Some(master) = console {
        send_with_fd(sync, &ChildReport::Console, &master)
            .map_err(|e| ChildError::io("send pty master", e))?;
    }
    nix::unistd::setsid().map_err(|e| ChildError::sys("setsid", e))?;
    if let Some(nice) = cfg.nice {
        sys::set_nice(nice).map_err(|e| ChildError::io("setpriority", e))?;
    }
    if terminal {
        sys::set_controlling_tty(sys::stdin_fd())
            .map_err(|e| ChildError::io("set controlling terminal", e))?;
    }
    apply_rlimits(&cfg.process)?;
    if let Some(adj) = cfg.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| ChildError::io("oom_score_adj", e))?;
    }
    let cwd = cfg.process.cwd().clone();
    let chdir_done = nix::unistd::chdir(&cwd).is_ok();
    let mut env: Vec<String> = cfg.process.env().clone().unwrap_or_default();
    // The setup child is not PID 1: it has the variable only if the agent handed it on.
    if let Some(ours) = std::env::var(crate::fpu_workaround::VAR)
        .ok()
        .filter(|v| !v.is_empty())
    {
        crate::fpu_workaround::merge_into(&mut env, &ours);
    }
    let args: Vec<String> = cfg.process.args().clone().unwrap_or_default();
    let exe = resolve_executable(args.first().map(String::as_str).unwrap_or(""), &env)?;

    if cfg.wait_for_start {
        steps.done("session, rlimits, cwd, executable");
        let ready = ChildReport::Ready { steps: steps.done };
        send(sync, &ready).map_err(|e| ChildError::io("report ready", e))?;
        match recv::<AgentCommand>(sync) {
            Ok(Some(AgentCommand::Start)) => {}
            // The agent removed the container before starting it.
            _ => std::process::exit(0),
        }
    }
    finalize(&cfg, chdir_done, &cwd)?;
    let c =
        |s: &str| CString::new(s).map_err(|_| ChildError::Invalid(format!("NUL byte in {s:?}")));
    let argv: Vec<CString> = args.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|e| c(e)).collect::<Result<_, _>>()?;
    let path = c(&exe.to_string_lossy())?;
    sys::reset_signal_dispositions();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    let err = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(ChildError::sys(format!("exec {}", exe.display()), err))
}

/// What one step of the setup child cost: its name, µs and minor page faults since the
/// previous step (the first since the process started, which includes the `execve` of the
/// agent binary). Page faults are the dearest thing on an emulating host after system calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCost {
    pub what: String,
    pub us: u64,
    pub minor_faults: u64,
}

impl std::fmt::Display for StepCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.us as f64 / 1e6;
        write!(f, "{} {secs:.3} s/{} faults", self.what, self.minor_faults)
    }
}

pub(super) struct Steps {
    pub(super) done: Vec<StepCost>,
    last: std::time::Instant,
    last_faults: u64,
}

fn minor_faults() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map_or(0, |u| u64::try_from(u.minor_page_faults()).unwrap_or(0))
}

impl Steps {
    /// A spare child's steps start at its claim (its start-up was paid before it was needed).
    fn new(spare: bool) -> Steps {
        let faults = minor_faults();
        let mut s = Steps {
            done: Vec::new(),
            last: std::time::Instant::now(),
            last_faults: faults,
        };
        if spare {
            s.done.push(StepCost {
                what: "spare claimed".into(),
                us: 0,
                minor_faults: faults,
            });
        } else if let Some(us) = sys::process_age_us() {
            s.done.push(StepCost {
                what: "exec until main".into(),
                us,
                minor_faults: faults,
            });
        }
        s
    }

    pub(super) fn done(&mut self, what: &str) {
        let now = std::time::Instant::now();
        let faults = minor_faults();
        self.done.push(StepCost {
            what: what.to_string(),
            us: u64::try_from(now.duration_since(self.last).as_micros()).unwrap_or(u64::MAX),
            minor_faults: faults.saturating_sub(self.last_faults),
        });
        self.last = now;
        self.last_faults = faults;
    }
}

fn setup_init(
    init: &InitConfig,
    terminal: bool,
    steps: &mut Steps,
) -> Result<Option<OwnedFd>, ChildError> {
    enter_namespaces(&RealSyscall, init)?;
    steps.done("namespaces");
    if init.new_namespaces.contains(&NsKind::Net) {
        loopback_up()?;
    }
    let extras = RootfsExtras {
        resolv_conf: init.resolv_conf.as_deref(),
        cgroup_style: &init.cgroup_style,
        terminal,
    };
    let console = rootfs::setup(
        &RealSyscall,
        &init.spec,
        &init.rootfs,
        &extras,
        &mut |what| steps.done(what),
    );
    steps.done("rootfs: the rest");
    console
}

/// Brings up `lo` in the network namespace the process just made (a new one has it down).
pub(super) fn loopback_up() -> Result<(), ChildError> {
    crate::network::loopback_up().map_err(|e| {
        ChildError::io(
            "bringing up lo in the new network namespace",
            std::io::Error::other(chain(&e)),
        )
    })
}

/// A container init's namespaces: joins the spec's paths, creates the new ones in one
/// `unshare`, and sets the spec's hostname when the process has a UTS namespace of its own
/// (new or joined), never the agent's.
pub fn enter_namespaces(sys: &dyn Syscall, init: &InitConfig) -> Result<(), ChildError> {
    for (kind, path) in &init.join_namespaces {
        namespaces::join_path(sys, *kind, path)?;
    }
    namespaces::unshare_kinds(sys, &init.new_namespaces)?;
    let uts = init.new_namespaces.contains(&NsKind::Uts)
        || init.join_namespaces.iter().any(|(k, _)| *k == NsKind::Uts);
    if let Some(hostname) = init
        .spec
        .hostname()
        .as_deref()
        .filter(|h| !h.is_empty() && uts)
    {
        sys.sethostname(hostname)
            .map_err(|e| ChildError::sys("sethostname", e))?;
    }
    Ok(())
}

fn apply_rlimits(process: &Process) -> Result<(), ChildError> {
    for rl in process.rlimits().iter().flatten() {
        setrlimit(rlimit_resource(rl.typ()), rl.soft(), rl.hard())
            .map_err(|e| ChildError::sys(format!("setrlimit {:?}", rl.typ()), e))?;
    }
    Ok(())
}

/// The kernel's resource for an OCI rlimit type.
pub fn rlimit_resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Finds the program: a path with '/' as given, else the first executable file on the
/// process's PATH (resolved inside the container).
fn resolve_executable(name: &str, env: &[String]) -> Result<PathBuf, ChildError> {
    if name.is_empty() {
        return Err(ChildError::Invalid("process.args is empty".into()));
    }
    let is_exe = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_exe(&p) {
            Ok(p)
        } else {
            Err(ChildError::NotFound(format!(
                "executable {name} not found in the container"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if is_exe(&p) {
            return Ok(p);
        }
    }
    Err(ChildError::NotFound(format!(
        "executable {name:?} not found in $PATH ({path}) in the container"
    )))
}

/// The privileged-to-unprivileged transition, in runc's order.
pub(super) fn finalize(cfg: &ChildConfig, chdir_done: bool, cwd: &Path) -> Result<(), ChildError> {
    let p = &cfg.process;
    let nnp = p.no_new_privileges().unwrap_or(false);
    if nnp {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| ChildError::sys("PR_SET_NO_NEW_PRIVS", e))?;
    }
    // Without NNP, loading a filter needs CAP_SYS_ADMIN: do it before dropping capabilities.
    if !nnp {
        load_seccomp(cfg)?;
    }
    let caps = p.capabilities().as_ref();
    capabilities::apply_bounding(caps)?;
    nix::sys::prctl::set_keepcaps(true).map_err(|e| ChildError::sys("PR_SET_KEEPCAPS", e))?;
    let user = p.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).map_err(|e| ChildError::sys("setgroups", e))?;
    setgid(Gid::from_raw(user.gid()))
        .map_err(|e| ChildError::sys(format!("setgid {}", user.gid()), e))?;
    setuid(Uid::from_raw(user.uid()))
        .map_err(|e| ChildError::sys(format!("setuid {}", user.uid()), e))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| ChildError::sys("PR_SET_KEEPCAPS", e))?;
    capabilities::apply_sets(caps)?;
    if !chdir_done {
        nix::unistd::chdir(cwd)
            .map_err(|e| ChildError::sys(format!("chdir {}", cwd.display()), e))?;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(user.umask().unwrap_or(0o022)));
    if nnp {
        load_seccomp(cfg)?;
    }
    Ok(())
}

fn load_seccomp(cfg: &ChildConfig) -> Result<(), ChildError> {
    if let Some(s) = &cfg.seccomp {
        sys::load_seccomp_filter(&s.to_sock_filters(), s.flags)
            .map_err(|e| ChildError::io("load seccomp filter", e))?;
    }
    Ok(())
}
