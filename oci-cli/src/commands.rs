//! The lifecycle commands: create, start, state, kill, delete, ps, features. Each answers as
//! runc does (output, messages the engines match on, exit status 1 on failure).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use serde_json::json;
use vessel_protocol::errors::chain;
use vessel_runtime::cleanup::cleanup_sandbox_dir;
use vessel_runtime::mounts::HostMounter;
use vessel_runtime::rootfs::host_rootfs;
use vessel_runtime::state::SandboxPaths;
use vessel_runtime::Config;

use crate::control::{self, Reply, Request};
use crate::errors::CliError;
use crate::holder::{self, NAMESPACE};
use crate::store::{ContainerDir, Record, Status, Store, NOT_RUNNING};
use crate::sys::{fork_single_threaded, Forked};

/// The OCI runtime spec version this runtime implements (runc 1.1's).
pub const OCI_VERSION: &str = "1.0.2";

/// Loads vessel's configuration (the flag, else `$VESSEL_CONFIG`, the system file, built-in).
pub fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    Config::load(path)
        .map(|(c, _)| c)
        .map_err(|e| CliError::Config(Box::new(e)))
}

/// runc's rules for a process's terminal and extra fds: a terminal needs a console socket
/// and a console socket a terminal; no host fd can cross into a VM.
pub fn check_stdio_flags(
    terminal: bool,
    console_socket: Option<&Path>,
    preserve_fds: i32,
) -> Result<(), CliError> {
    if preserve_fds > 0 {
        return Err(CliError::InvalidArgument(format!(
            "--preserve-fds {preserve_fds}: host fds cannot be passed into a VM"
        )));
    }
    match (terminal, console_socket) {
        (true, None) => Err(CliError::InvalidArgument(
            "cannot allocate tty if vessel-runc will detach without setting console socket".into(),
        )),
        (false, Some(_)) => Err(CliError::InvalidArgument(
            "cannot use console socket if vessel-runc will not detach or allocate tty".into(),
        )),
        _ => Ok(()),
    }
}

/// Writes `pid` to `path` atomically (a reader never sees an empty file), as runc does.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), CliError> {
    let tmp = path.with_extension("vessel-runc-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(|e| CliError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CliError::io("writing the pid file", path, e))
}

/// `create`: reserves the id, forks the holder (which boots the pod and creates the
/// container), waits for its verdict, writes the pid file. The holder outlives us: the
/// engine (a subreaper) inherits it as the container's process.
pub fn create(
    store: &Store,
    args: &liboci_cli::Create,
    config_path: Option<&Path>,
    log_file: Option<&Path>,
) -> Result<(), CliError> {
    let id = args.container_id.as_str();
    vessel_protocol::ids::check_name("container id", id)?;
    let bundle = std::path::absolute(&args.bundle)
        .map_err(|e| CliError::io("resolving the bundle", &args.bundle, e))?;
    let spec = Spec::load(bundle.join("config.json"))
        .map_err(|e| CliError::InvalidArgument(format!("{}/config.json: {e}", bundle.display())))?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    check_stdio_flags(terminal, args.console_socket.as_deref(), args.preserve_fds)?;
    let config = load_config(config_path)?;
    let rootfs = host_rootfs(
        &bundle,
        &[],
        spec.root().as_ref().map(|r| r.path().as_path()),
    );
    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let dir = store.create(id)?;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(CliError::sys("pipe"))?;
    let forked = fork_single_threaded().map_err(CliError::sys("fork"));
    let child = match forked {
        Ok(Forked::Child) => {
            drop(r);
            crate::logging::set_container(id);
            if log_file.is_none() {
                crate::logging::leave_stderr(&dir.path().join("holder.log"));
            }
            let setup = holder::Setup {
                id: id.to_string(),
                bundle,
                rootfs,
                annotations,
                config,
                dir,
                console_socket: args.console_socket.clone(),
            };
            std::process::exit(holder::run(setup, w));
        }
        Ok(Forked::Parent { child }) => child,
        Err(e) => {
            let _ = dir.remove();
            return Err(e);
        }
    };
    drop(w);
    let verdict = crate::stdio::read_report(r);
    if verdict != "ok" {
        // The holder undid the pod before it said so; what is left is the directory.
        let _ = dir.remove();
        return Err(CliError::Holder(if verdict.is_empty() {
            format!(
                "container {id}: its holder exited before the container was created (its log: {}/holder.log)",
                dir.path().display()
            )
        } else {
            verdict
        }));
    }
    if let Some(p) = &args.pid_file {
        if let Err(e) = write_pid_file(p, child.as_raw()) {
            // Nobody would know the container's pid: end it (SIGTERM ends a created
            // container's holder, which tears its pod down).
            let _ = nix::sys::signal::kill(child, Signal::SIGTERM);
            return Err(e);
        }
    }
    Ok(())
}

/// A container's record, refused if absent.
fn record_of(store: &Store, id: &str) -> Result<(ContainerDir, Record), CliError> {
    let dir = store.open(id)?;
    let record = dir.read()?;
    Ok((dir, record))
}

/// Sends one request to the container's holder.
pub fn ask(dir: &ContainerDir, record: &Record, request: &Request) -> Result<Reply, CliError> {
    let conn = connect(dir, record)?;
    let reply = control::call(&conn, request, &[]).map_err(|source| CliError::Control {
        id: record.id.clone(),
        source,
    })?;
    match &reply.error {
        Some(e) => Err(CliError::Holder(e.clone())),
        None => Ok(reply),
    }
}

/// A connection to the holder (gone: a clear error, not a socket errno).
pub fn connect(dir: &ContainerDir, record: &Record) -> Result<OwnedFd, CliError> {
    control::connect_to(&dir.socket()).map_err(|e| {
        if record.holder.is_alive() {
            CliError::Control {
                id: record.id.clone(),
                source: e.into(),
            }
        } else {
            CliError::HolderGone {
                id: record.id.clone(),
                pid: record.holder.pid,
            }
        }
    })
}

pub fn start(store: &Store, id: &str) -> Result<(), CliError> {
    let (dir, record) = record_of(store, id)?;
    match record.effective_status().start_refusal() {
        None => ask(&dir, &record, &Request::Start).map(drop),
        Some(refusal) => Err(CliError::Refused(refusal.into())),
    }
}

/// runc's `state` JSON.
pub fn state_json(record: &Record) -> serde_json::Value {
    let status = record.effective_status();
    let pid = if status == Status::Stopped {
        0
    } else {
        record.holder.pid
    };
    json!({
        "ociVersion": OCI_VERSION,
        "id": record.id,
        "pid": pid,
        "status": status.as_str(),
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "owner": "",
        "annotations": record.annotations,
    })
}

pub fn state(store: &Store, id: &str) -> Result<String, CliError> {
    let (_, record) = record_of(store, id)?;
    serde_json::to_string_pretty(&state_json(&record))
        .map_err(|e| CliError::InvalidArgument(e.to_string()))
}

/// A signal by name (`KILL`, `SIGKILL`) or number, as runc takes it.
pub fn parse_signal(text: &str) -> Result<i32, CliError> {
    let bad = || CliError::InvalidArgument(format!("unknown signal {text:?}"));
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map(|s| s as i32).map_err(|_| bad());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map(|s| s as i32).map_err(|_| bad())
}

pub fn kill(store: &Store, id: &str, signal: Option<&str>, all: bool) -> Result<(), CliError> {
    let signal = parse_signal(signal.unwrap_or("SIGTERM"))?;
    let (dir, record) = record_of(store, id)?;
    if record.effective_status() == Status::Stopped {
        return Err(CliError::Refused(NOT_RUNNING.into()));
    }
    ask(&dir, &record, &Request::Kill { signal, all }).map(drop)
}

/// How long `delete` waits for a holder to tear its pod down before it kills it.
fn holder_grace(config: &Config) -> Duration {
    config.shutdown_timeout() + Duration::from_secs(30)
}

pub fn delete(
    store: &Store,
    id: &str,
    force: bool,
    config_path: Option<&Path>,
) -> Result<(), CliError> {
    let dir = match store.open(id) {
        Err(CliError::NotExist) if force => return Ok(()),
        other => other?,
    };
    let config = load_config(config_path)?;
    let record = match dir.read() {
        Ok(r) => r,
        // Reserved but never recorded: a create that died (or is still booting: only
        // --force takes that one away).
        Err(CliError::NotExist) if force => {
            release_leftovers(&config, id);
            return dir.remove();
        }
        Err(e) => return Err(e),
    };
    match record.effective_status() {
        s @ (Status::Running | Status::Paused) if !force => {
            return Err(CliError::Refused(format!(
                "cannot delete container {id} that is not stopped: {}",
                s.as_str()
            )))
        }
        Status::Created | Status::Running | Status::Paused => {
            ask(&dir, &record, &Request::Delete)?;
            wait_gone(&record, holder_grace(&config));
        }
        Status::Stopped => {}
    }
    if record.holder.is_alive() {
        // It ended the container but is still tearing down (or stuck): wait, then kill.
        wait_gone(&record, holder_grace(&config));
    }
    release_leftovers(&config, id);
    dir.remove()
}

/// Waits until the holder is gone; kills it after `grace`.
fn wait_gone(record: &Record, grace: Duration) {
    let deadline = Instant::now() + grace;
    while record.holder.is_alive() {
        if Instant::now() > deadline {
            log::warn!(
                "container {}: holder {} did not finish in {grace:?}; killing it",
                record.id,
                record.holder.pid
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(record.holder.pid),
                Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a holder that died (killed, crashed) left of its pod: the VMM, mounts, state.
fn release_leftovers(config: &Config, id: &str) {
    let paths = match SandboxPaths::new(&config.runtime.state_root, NAMESPACE, id) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("container {id}: {}", chain(&e));
            return;
        }
    };
    match cleanup_sandbox_dir(&paths, &HostMounter, config.shutdown_timeout()) {
        Ok(r) if r.existed => {
            paths.remove_empty_namespace_dir();
            log::warn!(
                "container {id}: cleaned up after its holder (VMM killed: {}, unmounted: {})",
                r.killed_vmm,
                r.unmounted
            );
        }
        Ok(_) => {}
        Err(e) => log::error!("container {id}: cleanup: {}", chain(&e)),
    }
}

/// `ps`. runc's JSON is host pids (Docker's `top` and containerd's `Pids` read it, then look
/// them up in the host's /proc): the host process that stands for the container is its
/// holder, so that is the list. The table is for people: the guest's pids of the
/// container's processes.
pub fn ps(store: &Store, id: &str, format: &str) -> Result<String, CliError> {
    let (dir, record) = record_of(store, id)?;
    let status = record.effective_status();
    if status == Status::Stopped {
        return Err(CliError::Refused(NOT_RUNNING.into()));
    }
    match format {
        "json" => Ok(format!("[{}]", record.holder.pid)),
        "table" => {
            let pids = ask(&dir, &record, &Request::Pids)?.pids;
            let mut out = String::from("GUEST-PID");
            for p in pids {
                out.push_str(&format!("\n{p}"));
            }
            Ok(out)
        }
        other => Err(CliError::InvalidArgument(format!(
            "invalid format option {other:?}"
        ))),
    }
}

/// `pause` (`true`) or `resume`: freezes or thaws the container's processes in the guest.
pub fn pause(store: &Store, id: &str, pause: bool) -> Result<(), CliError> {
    let (dir, record) = record_of(store, id)?;
    let (want, request) = if pause {
        (Status::Running, Request::Pause)
    } else {
        (Status::Paused, Request::Resume)
    };
    let status = record.effective_status();
    if status != want {
        return Err(CliError::Refused(format!(
            "container not {}",
            want.as_str()
        )));
    }
    ask(&dir, &record, &request).map(drop)
}

/// `list`: the containers under `--root`, as runc's table or JSON.
pub fn list(store: &Store, format: &str, quiet: bool) -> Result<String, CliError> {
    let records = store.records()?;
    if quiet {
        return Ok(records
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join("\n"));
    }
    match format {
        "json" => {
            let all: Vec<_> = records.iter().map(state_json).collect();
            serde_json::to_string(&all).map_err(|e| CliError::InvalidArgument(e.to_string()))
        }
        "table" => {
            let mut out = String::from("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
            for r in &records {
                let st = state_json(r);
                out.push_str(&format!(
                    "\n{}\t{}\t{}\t{}\t{}\troot",
                    r.id,
                    st["pid"],
                    r.effective_status().as_str(),
                    r.bundle.display(),
                    r.created
                ));
            }
            Ok(out)
        }
        other => Err(CliError::InvalidArgument(format!(
            "invalid format option {other:?}"
        ))),
    }
}

/// runc's `features` document, for what a VM runtime offers.
pub fn features() -> serde_json::Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
        },
        "annotations": {
            "io.github.vessel.runtime": "vm",
            "io.github.vessel.version": env!("CARGO_PKG_VERSION"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number_as_runc_takes_them() {
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        for bad in ["NOPE", "0", "999", "", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn terminal_and_console_socket_go_together() {
        let sock = Some(Path::new("/c.sock"));
        assert!(check_stdio_flags(true, sock, 0).is_ok());
        assert!(check_stdio_flags(false, None, 0).is_ok());
        assert!(check_stdio_flags(true, None, 0).is_err());
        assert!(check_stdio_flags(false, sock, 0).is_err());
        assert!(check_stdio_flags(false, None, 1).is_err());
    }
}
