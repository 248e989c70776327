//! `exec`: a process in a running container. The process that waits for it here is its
//! holder on the host, as the container's holder is for the init: it sends its stdio fds (or
//! a pty's slave, the master going to the console socket) with the request, forwards
//! signals and exits with the process's status. With `--detach` that is a forked child
//! whose pid goes to the pid file (conmon and the runc shim reap it).

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::{Capabilities, Capability, Process, Spec};
use vessel_protocol::errors::chain;

use crate::commands::{ask, check_stdio_flags, connect, write_pid_file};
use crate::control::{self, Reply, Request};
use crate::errors::CliError;
use crate::holder::block_forwarded;
use crate::stdio::{self, ExecStreams};
use crate::store::{ContainerDir, Record, Store};
use crate::sys::{fork_single_threaded, Forked};

/// The largest `--process` file read.
const MAX_PROCESS_JSON: u64 = 64 * 1024;

/// The exec's process as JSON, from `--process` or built from the container's own process
/// with the command line's args (runc's rule).
fn process_json(args: &liboci_cli::Exec, record: &Record) -> Result<(String, bool), CliError> {
    let process: Process = match &args.process {
        Some(path) => {
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_PROCESS_JSON + 1).read_to_string(&mut text))
                .map_err(|e| CliError::io("reading the process file", path, e))?;
            if text.len() as u64 > MAX_PROCESS_JSON {
                return Err(CliError::InvalidArgument(format!(
                    "{}: longer than {MAX_PROCESS_JSON} bytes",
                    path.display()
                )));
            }
            serde_json::from_str(&text)
                .map_err(|e| CliError::InvalidArgument(format!("{}: {e}", path.display())))?
        }
        None => {
            if args.command.is_empty() {
                return Err(CliError::InvalidArgument(
                    "exec: a command or --process is required".into(),
                ));
            }
            let spec = Spec::load(record.bundle.join("config.json")).map_err(|e| {
                CliError::InvalidArgument(format!("{}/config.json: {e}", record.bundle.display()))
            })?;
            let mut p = spec.process().clone().unwrap_or_default();
            apply_command_line(&mut p, args)?;
            p
        }
    };
    let terminal = process.terminal().unwrap_or(false);
    let json = serde_json::to_string(&process)
        .map_err(|e| CliError::InvalidArgument(format!("process: {e}")))?;
    Ok((json, terminal))
}

/// runc's exec flags over the container's own process.
fn apply_command_line(p: &mut Process, args: &liboci_cli::Exec) -> Result<(), CliError> {
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(cwd.clone());
    }
    if !args.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        env.extend(args.env.iter().map(|(k, v)| format!("{k}={v}")));
        p.set_env(Some(env));
    }
    if let Some((uid, gid)) = args.user {
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid.unwrap_or(0));
        if !args.additional_gids.is_empty() {
            user.set_additional_gids(Some(args.additional_gids.clone()));
        }
        p.set_user(user);
    }
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let cap: Capability = name
                .parse()
                .map_err(|_| CliError::InvalidArgument(format!("unknown capability {name:?}")))?;
            let with = |set: &Option<Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(cap);
                Some(set)
            };
            caps.set_bounding(with(caps.bounding()));
            caps.set_effective(with(caps.effective()));
            caps.set_permitted(with(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    Ok(())
}

/// Runs `exec`; returns the exit status for this process (0 once a detached exec started).
pub fn exec(store: &Store, args: &liboci_cli::Exec) -> Result<i32, CliError> {
    let dir = store.open(&args.container_id)?;
    let record = dir.read()?;
    record
        .effective_status()
        .unless_running("exec in")
        .map_err(CliError::Refused)?;
    let (process, terminal) = process_json(args, &record)?;
    check_stdio_flags(terminal, args.console_socket.as_deref(), args.preserve_fds)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let exec = Exec {
        dir,
        record,
        exec_id: format!("exec-{}-{nanos}", std::process::id()),
        process,
        console_socket: args.console_socket.as_deref(),
    };
    if !args.detach {
        if let Some(p) = &args.pid_file {
            write_pid_file(p, std::process::id() as i32)?;
        }
        return exec.run(None, false);
    }
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(CliError::sys("pipe"))?;
    match fork_single_threaded().map_err(CliError::sys("fork"))? {
        Forked::Child => {
            drop(r);
            let code = match exec.run(Some(&w), true) {
                Ok(code) => code,
                Err(e) => {
                    let message = chain(&e);
                    log::error!("exec in {}: {message}", exec.record.id);
                    stdio::report(&w, &message);
                    1
                }
            };
            std::process::exit(code);
        }
        Forked::Parent { child } => {
            drop(w);
            let verdict = stdio::read_report(r);
            if verdict != "ok" {
                return Err(CliError::Holder(if verdict.is_empty() {
                    "the exec's holder exited before the process started".into()
                } else {
                    verdict
                }));
            }
            if let Some(p) = &args.pid_file {
                write_pid_file(p, child.as_raw())?;
            }
            Ok(0)
        }
    }
}

struct Exec<'a> {
    dir: ContainerDir,
    record: Record,
    exec_id: String,
    process: String,
    console_socket: Option<&'a Path>,
}

impl Exec<'_> {
    /// Sends the request, waits for the process; returns its status. `ready` hears "ok"
    /// once it started. `detached`: we are the forked holder (our own session, so a
    /// terminal's resize reaches us; our copies of the engine's fds are let go).
    fn run(&self, ready: Option<&OwnedFd>, detached: bool) -> Result<i32, CliError> {
        let signals = block_forwarded()?;
        let mut tty = None;
        if let Some(socket) = self.console_socket {
            if detached {
                nix::unistd::setsid().map_err(CliError::sys("setsid"))?;
            }
            let (master, slave) = crate::console::open_pty()?;
            crate::console::send_master(socket, &master)?;
            if detached {
                crate::sys::set_controlling_tty(slave.as_fd())
                    .map_err(CliError::sys("making the pty our terminal"))?;
            }
            tty = Some(slave);
        }
        let (streams, fds) = ExecStreams::of_this_process(tty.as_ref());
        let conn = connect(&self.dir, &self.record)?;
        let request = Request::Exec {
            exec_id: self.exec_id.clone(),
            process: self.process.clone(),
            terminal: streams.terminal,
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
        };
        let reply = control::call(&conn, &request, &fds).map_err(|source| CliError::Control {
            id: self.record.id.clone(),
            source,
        })?;
        if let Some(e) = reply.error {
            return Err(CliError::Holder(e));
        }
        self.resize(tty.as_ref());
        if let Some(w) = ready {
            stdio::report(w, "ok");
        }
        if detached {
            stdio::detach_inherited();
        }
        std::thread::scope(|s| {
            s.spawn(|| self.forward_signals(&signals, tty.as_ref()));
            let status = match control::recv::<Reply>(conn.as_fd()) {
                Ok(Some((
                    Reply {
                        exit_status: Some(status),
                        ..
                    },
                    _,
                ))) => Ok(i32::try_from(status.min(255)).unwrap_or(255)),
                Ok(_) => Err(CliError::HolderGone {
                    id: self.record.id.clone(),
                    pid: self.record.holder.pid,
                }),
                Err(source) => Err(CliError::Control {
                    id: self.record.id.clone(),
                    source,
                }),
            };
            // The signal thread waits forever: the process ends here.
            std::process::exit(match status {
                Ok(code) => code,
                Err(e) => {
                    log::error!("exec in {}: {}", self.record.id, chain(&e));
                    255
                }
            })
        })
    }

    /// Tells the guest the terminal's size.
    fn resize(&self, tty: Option<&OwnedFd>) {
        let Some(tty) = tty else { return };
        let Ok((rows, cols)) = crate::sys::window_size(tty.as_fd()) else {
            return;
        };
        if rows == 0 || cols == 0 {
            return;
        }
        let request = Request::Resize {
            exec_id: self.exec_id.clone(),
            rows,
            cols,
        };
        if let Err(e) = ask(&self.dir, &self.record, &request) {
            log::warn!("exec {}: resize: {}", self.exec_id, chain(&e));
        }
    }

    fn forward_signals(&self, set: &SigSet, tty: Option<&OwnedFd>) {
        loop {
            let Ok(signal) = set.wait() else { continue };
            if signal == Signal::SIGWINCH {
                self.resize(tty);
                continue;
            }
            let request = Request::SignalExec {
                exec_id: self.exec_id.clone(),
                signal: signal as i32,
            };
            if let Err(e) = ask(&self.dir, &self.record, &request) {
                log::warn!("exec {}: forwarding {signal}: {}", self.exec_id, chain(&e));
            }
        }
    }
}
