//! The holder: the host process that stands for one container, forked by `create`.
//!
//! Its pid is the one the engine sees (the `--pid-file`), so it lives exactly as long as the
//! container's init and exits with its status (conmon and the runc shim reap it as they
//! would reap runc's init). It owns the container's pod, through the same runtime `Pods` the
//! containerd shim uses: the VM, the agent connection, the rootfs share and the stdio relay
//! between the fds the engine passed (or the pty whose master went to the console socket)
//! and the guest. It serves the other commands on the control socket and forwards the
//! signals it gets to the container's init.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use vessel_protocol::errors::chain;
use vessel_protocol::sync::lock;
use vessel_runtime::mounts::HostMounter;
use vessel_runtime::pod::{CreateRequest, ExitEvent, PodEvents, StdioPaths};
use vessel_runtime::state::ProcessIdentity;
use vessel_runtime::vm::backend_from_config;
use vessel_runtime::{Config, Pods, PodsDeps};

use crate::control::{self, Reply, Request};
use crate::errors::CliError;
use crate::stdio;
use crate::store::{now_rfc3339, ContainerDir, Record, Status, NOT_RUNNING};

/// The containerd-style namespace the CLI's pods live in (`vessel list`, `vessel monitor`).
/// Short: podman's ids are 64 characters, and `<state_root>/<namespace>/<id>/vsock.sock`
/// must fit a Unix socket path (107 bytes).
pub const NAMESPACE: &str = "runc";

/// Signals a holder passes on to the process it stands for (SIGWINCH: the terminal's size).
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The status of a process ended by `signal` (the shell's and containerd's convention).
pub fn killed_by(signal: i32) -> u32 {
    128 + u32::try_from(signal).unwrap_or(0)
}

/// Blocks [`FORWARDED`] in the calling thread (and the threads it starts after), so one
/// thread can take them with `sigwait`.
pub fn block_forwarded() -> Result<SigSet, CliError> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.thread_block()
        .map_err(CliError::sys("blocking signals"))?;
    Ok(set)
}

/// What `create` knows when it forks the holder.
pub struct Setup {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub annotations: BTreeMap<String, String>,
    pub config: Config,
    pub dir: ContainerDir,
    pub console_socket: Option<PathBuf>,
}

/// Why the container ended.
enum End {
    /// The init exited with this status.
    Exited(u32),
    /// It was ended before it started (kill or delete of a created container).
    NeverStarted(u32),
}

struct Holder {
    id: String,
    pods: Pods,
    dir: ContainerDir,
    record: Mutex<Record>,
    ending: Mutex<Sender<End>>,
    /// The pty slave of a terminal container (for its size).
    tty: Option<OwnedFd>,
}

struct LogEvents;
impl PodEvents for LogEvents {
    fn exited(&self, _: &ExitEvent) {}
    fn oom(&self, container_id: &str) {
        log::warn!(container = container_id; "container {container_id}: out of memory");
    }
}

/// Runs the holder in the forked child; returns its exit status. `ready` gets "ok" once the
/// container is created, or the error's message.
pub fn run(setup: Setup, ready: OwnedFd) -> i32 {
    let id = setup.id.clone();
    // The runtime's lines (pod start, step times) at the configured level.
    log::set_max_level(log::max_level().max(setup.config.log_level()));
    // Before any thread starts (the pod starts several), so that every thread has them
    // blocked and only `forward_signals` takes them.
    let signals = match block_forwarded() {
        Ok(set) => Some(set),
        Err(e) => {
            log::warn!("signals will not be forwarded: {}", chain(&e));
            None
        }
    };
    match prepare(setup) {
        Ok((holder, ends)) => {
            stdio::report(&ready, "ok");
            drop(ready);
            serve(holder, ends, signals)
        }
        Err(e) => {
            let message = chain(&e);
            log::error!(container = id.as_str(); "create {id}: {message}");
            stdio::report(&ready, &message);
            1
        }
    }
}

/// Everything up to a created container: the terminal, the pod, the socket, the record.
fn prepare(setup: Setup) -> Result<(Arc<Holder>, Receiver<End>), CliError> {
    stdio::close_on_exec_above_stderr();
    let id = setup.id.clone();
    let mut tty = None;
    let stdio = match &setup.console_socket {
        Some(socket) => {
            // Our own session with the pty as its terminal: a resize of the master (the
            // engine's) then sends us SIGWINCH.
            nix::unistd::setsid().map_err(CliError::sys("setsid"))?;
            let (master, slave) = crate::console::open_pty()?;
            crate::console::send_master(socket, &master)?;
            crate::sys::set_controlling_tty(slave.as_fd())
                .map_err(CliError::sys("making the pty our terminal"))?;
            let path = stdio::fd_path(&slave);
            tty = Some(slave);
            StdioPaths {
                stdin: path.clone(),
                stdout: path,
                stderr: String::new(),
                terminal: true,
            }
        }
        None => stdio::inherited_paths(),
    };
    let config = Arc::new(setup.config);
    let pods = Pods::new(PodsDeps {
        namespace: NAMESPACE.to_string(),
        backend: backend_from_config(&config),
        config: Ok(Arc::clone(&config)),
        mounter: Arc::new(HostMounter),
        events: Arc::new(LogEvents),
    });
    pods.create(CreateRequest {
        id: id.clone(),
        bundle: setup.bundle.clone(),
        rootfs: Vec::new(),
        stdio,
    })
    .map_err(|source| CliError::Pod {
        context: format!("creating container {id}"),
        source: Box::new(source),
    })?;
    let fail = |e: CliError, pods: &Pods| {
        if let Err(d) = pods.delete(&id, "") {
            log::error!("create {id}: rollback: {}", chain(&d));
        }
        e
    };
    let socket = setup.dir.socket();
    // A socket left by a holder that died is in the way; this id's directory is ours.
    let _ = std::fs::remove_file(&socket);
    let listener = match control::listen_at(&socket) {
        Ok(l) => l,
        Err(e) => return Err(fail(CliError::sys("control socket")(e), &pods)),
    };
    let me = ProcessIdentity::of(std::process::id() as i32).ok_or_else(|| {
        CliError::io(
            "reading our own /proc entry",
            "/proc/self/stat",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    });
    let me = match me {
        Ok(me) => me,
        Err(e) => return Err(fail(e, &pods)),
    };
    let record = Record {
        id: id.clone(),
        bundle: setup.bundle,
        rootfs: setup.rootfs,
        created: now_rfc3339(),
        holder: me,
        status: Status::Created,
        exit_status: None,
        annotations: setup.annotations,
    };
    if let Err(e) = setup.dir.write(&record) {
        return Err(fail(e, &pods));
    }
    let (tx, rx) = channel();
    let holder = Arc::new(Holder {
        id,
        pods,
        dir: setup.dir,
        record: Mutex::new(record),
        ending: Mutex::new(tx),
        tty,
    });
    spawn_named("control", {
        let h = Arc::clone(&holder);
        move || accept_loop(&h, listener)
    });
    Ok((holder, rx))
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.to_string()).spawn(f) {
        log::error!("starting thread {name}: {e}");
    }
}

/// From a created container to its end: signals, the init's exit, teardown. Returns the
/// init's status.
fn serve(holder: Arc<Holder>, ends: Receiver<End>, signals: Option<SigSet>) -> i32 {
    stdio::detach_inherited();
    if let Some(set) = signals {
        let h = Arc::clone(&holder);
        spawn_named("signals", move || forward_signals(&h, set));
    }
    let end = ends.recv().unwrap_or(End::Exited(255));
    let status = match end {
        End::Exited(s) | End::NeverStarted(s) => s,
    };
    let id = holder.id.clone();
    {
        let mut r = lock(&holder.record);
        r.status = Status::Stopped;
        r.exit_status = Some(status);
        if let Err(e) = holder.dir.write(&r) {
            log::error!("container {id}: recording its end: {}", chain(&e));
        }
    }
    match holder.pods.delete(&id, "") {
        Ok(d) => {
            if let Err(e) = d.cleanup {
                log::error!("container {id}: cleanup: {}", chain(&e));
            }
        }
        Err(e) => log::error!("container {id}: deleting its pod: {}", chain(&e)),
    }
    let _ = std::fs::remove_file(holder.dir.socket());
    log::info!(container = id.as_str(); "container {id}: ended with status {status}");
    i32::try_from(status.min(255)).unwrap_or(255)
}

/// Takes the blocked signals: SIGWINCH resizes the init's terminal, the others go to the
/// init (or end a container that never started, as they would end runc's waiting init).
fn forward_signals(holder: &Holder, set: SigSet) {
    loop {
        let Ok(signal) = set.wait() else { continue };
        let status = lock(&holder.record).status;
        if signal == Signal::SIGWINCH {
            if status == Status::Running {
                resize_init(holder);
            }
            continue;
        }
        log::info!("container {}: forwarding {signal}", holder.id);
        match status {
            Status::Created => holder.end(End::NeverStarted(killed_by(signal as i32))),
            Status::Running | Status::Paused => {
                if let Err(e) = holder.pods.kill(&holder.id, "", signal as u32, false) {
                    log::warn!(
                        "container {}: forwarding {signal}: {}",
                        holder.id,
                        chain(&e)
                    );
                }
            }
            Status::Stopped => {}
        }
    }
}

fn resize_init(holder: &Holder) {
    let Some(tty) = &holder.tty else { return };
    match crate::sys::window_size(tty.as_fd()) {
        Ok((rows, cols)) if rows > 0 && cols > 0 => {
            let r = holder
                .pods
                .resize_pty(&holder.id, "", u32::from(rows), u32::from(cols));
            if let Err(e) = r {
                log::warn!("container {}: resize: {}", holder.id, chain(&e));
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("container {}: terminal size: {e}", holder.id),
    }
}

impl Holder {
    fn end(&self, end: End) {
        let _ = lock(&self.ending).send(end);
    }

    fn start(self: &Arc<Self>) -> Result<(), String> {
        let mut r = lock(&self.record);
        if let Some(refusal) = r.status.start_refusal() {
            return Err(refusal.into());
        }
        self.pods
            .start(&self.id, "")
            .map_err(|e| format!("starting container {}: {}", self.id, chain(&e)))?;
        r.status = Status::Running;
        self.dir.write(&r).map_err(|e| chain(&e))?;
        drop(r);
        let h = Arc::clone(self);
        spawn_named("wait-init", move || {
            let status = match h.pods.wait(&h.id, "") {
                Ok(info) => info.exit_status,
                Err(e) => {
                    log::error!("container {}: waiting for its init: {}", h.id, chain(&e));
                    255
                }
            };
            h.end(End::Exited(status));
        });
        resize_init(self);
        Ok(())
    }

    fn kill(&self, signal: i32, all: bool) -> Result<(), String> {
        let status = lock(&self.record).status;
        match status {
            Status::Created => {
                self.end(End::NeverStarted(killed_by(signal)));
                Ok(())
            }
            Status::Running | Status::Paused => {
                let sig = u32::try_from(signal).map_err(|_| format!("invalid signal {signal}"))?;
                self.pods
                    .kill(&self.id, "", sig, all)
                    .map_err(|e| format!("kill {}: {}", self.id, chain(&e)))
            }
            Status::Stopped => Err(NOT_RUNNING.into()),
        }
    }

    /// Freezes (`true`) or thaws the container's processes.
    fn pause(&self, pause: bool) -> Result<(), String> {
        let mut r = lock(&self.record);
        let (from, to) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if r.status != from {
            return Err(format!("container not {}", from.as_str()));
        }
        let done = if pause {
            self.pods.pause(&self.id)
        } else {
            self.pods.resume(&self.id)
        };
        done.map_err(|e| {
            format!(
                "{} {}: {}",
                if pause { "pause" } else { "resume" },
                self.id,
                chain(&e)
            )
        })?;
        r.status = to;
        self.dir.write(&r).map_err(|e| chain(&e))
    }

    fn delete(&self) -> Result<(), String> {
        let status = lock(&self.record).status;
        match status {
            Status::Created => self.end(End::NeverStarted(killed_by(libc::SIGKILL))),
            Status::Running | Status::Paused => {
                self.pods
                    .kill(&self.id, "", libc::SIGKILL as u32, true)
                    .map_err(|e| format!("kill {}: {}", self.id, chain(&e)))?;
            }
            Status::Stopped => {}
        }
        Ok(())
    }
}

fn accept_loop(holder: &Arc<Holder>, listener: OwnedFd) {
    loop {
        match crate::sys::accept(listener.as_fd()) {
            Ok(conn) => {
                let h = Arc::clone(holder);
                spawn_named("request", move || handle(&h, conn));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log::error!("container {}: control socket: {e}", holder.id);
                return;
            }
        }
    }
}

/// Answers one connection's request.
fn handle(holder: &Arc<Holder>, conn: OwnedFd) {
    let (request, fds) = match control::recv::<Request>(conn.as_fd()) {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            let _ = control::send(conn.as_fd(), &Reply::error(e.to_string()), &[]);
            return;
        }
    };
    let id = holder.id.as_str();
    let result: Result<Reply, String> = match request {
        Request::Start => holder.start().map(|()| Reply::ok()),
        Request::Kill { signal, all } => holder.kill(signal, all).map(|()| Reply::ok()),
        Request::Delete => holder.delete().map(|()| Reply::ok()),
        Request::Pause => holder.pause(true).map(|()| Reply::ok()),
        Request::Resume => holder.pause(false).map(|()| Reply::ok()),
        Request::Pids => holder
            .pods
            .pids(id)
            .map_err(|e| format!("ps {id}: {}", chain(&e)))
            .map(|pids| Reply {
                pids,
                ..Reply::default()
            }),
        Request::SignalExec { exec_id, signal } => u32::try_from(signal)
            .map_err(|_| format!("invalid signal {signal}"))
            .and_then(|sig| {
                holder
                    .pods
                    .kill(id, &exec_id, sig, false)
                    .map_err(|e| format!("kill {id}/{exec_id}: {}", chain(&e)))
            })
            .map(|()| Reply::ok()),
        Request::Resize {
            exec_id,
            rows,
            cols,
        } => holder
            .pods
            .resize_pty(id, &exec_id, u32::from(rows), u32::from(cols))
            .map(|()| Reply::ok())
            .map_err(|e| format!("resize {id}/{exec_id}: {}", chain(&e))),
        Request::Exec {
            exec_id,
            process,
            terminal,
            stdin,
            stdout,
            stderr,
        } => {
            let streams = stdio::ExecStreams {
                terminal,
                stdin,
                stdout,
                stderr,
            };
            return exec(holder, &conn, &exec_id, &process, streams, fds);
        }
    };
    let reply = result.unwrap_or_else(Reply::error);
    if let Err(e) = control::send(conn.as_fd(), &reply, &[]) {
        log::warn!("container {id}: answering a request: {e}");
    }
}

/// Runs an exec: answers once it started, then again with its exit status.
fn exec(
    holder: &Arc<Holder>,
    conn: &OwnedFd,
    exec_id: &str,
    process: &str,
    streams: stdio::ExecStreams,
    fds: Vec<OwnedFd>,
) {
    let id = holder.id.as_str();
    let answer = |reply: &Reply| {
        if let Err(e) = control::send(conn.as_fd(), reply, &[]) {
            log::warn!("container {id}: exec {exec_id}: answering: {e}");
        }
    };
    if let Err(e) = lock(&holder.record).status.unless_running("exec in") {
        return answer(&Reply::error(e));
    }
    let paths = match streams.paths(&fds) {
        Ok(p) => p,
        Err(e) => return answer(&Reply::error(e)),
    };
    if let Err(e) = holder.pods.exec(id, exec_id, process.as_bytes(), paths) {
        return answer(&Reply::error(format!("exec in {id}: {}", chain(&e))));
    }
    if let Err(e) = holder.pods.start(id, exec_id) {
        let _ = holder.pods.delete(id, exec_id);
        return answer(&Reply::error(format!("exec in {id}: {}", chain(&e))));
    }
    // The relay opened its own fds on them.
    drop(fds);
    answer(&Reply::ok());
    let status = match holder.pods.wait(id, exec_id) {
        Ok(info) => info.exit_status,
        Err(e) => {
            log::warn!("container {id}: exec {exec_id}: {}", chain(&e));
            255
        }
    };
    answer(&Reply {
        exit_status: Some(status),
        ..Reply::default()
    });
    if let Err(e) = holder.pods.delete(id, exec_id) {
        log::warn!("container {id}: exec {exec_id}: delete: {}", chain(&e));
    }
}
