//! The shim's entry point, speaking the shim protocol of containerd 1.6 / 1.7 as well as 2.x.
//!
//! `containerd_shim::run` targets containerd ≥ 2.0: it answers `start` with JSON and serves
//! only `containerd.task.v3.Task`. containerd 1.6 (Debian's) reads a bare address from `start`
//! and calls `containerd.task.v2.Task` — the same messages under another service name. So this
//! module drives the same [`Shim`] trait itself: a bare address on `start` (which containerd 2.x
//! also accepts, as a v2 shim), and the task service registered under both names.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc::{MethodHandler, Server};
use containerd_shim::{Shim, StartOpts, Task};
use protobuf::Message;
use vessel_protocol::log_format::LogFormat;

use crate::service::{socket_path, socket_serving, VesselShim, RUNTIME_ID};

type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

const V3_PREFIX: &str = "/containerd.task.v3.Task/";
const V2_PREFIX: &str = "/containerd.task.v2.Task/";

/// The task service's ttrpc methods under both `containerd.task.v2.Task` and `.v3.Task`.
pub fn task_methods(task: Arc<dyn Task + Send + Sync>) -> Methods {
    let mut methods = create_task(Arc::clone(&task));
    for (path, handler) in create_task(task) {
        if let Some(method) = path.strip_prefix(V3_PREFIX) {
            methods.insert(format!("{V2_PREFIX}{method}"), handler);
        }
    }
    methods
}

/// Runs the shim binary; returns the process exit code.
pub fn run() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return 1;
        }
    };
    if flags.version {
        println!("containerd-shim-vessel-v2 {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    if flags.namespace.is_empty() {
        eprintln!("{RUNTIME_ID}: -namespace is required");
        return 1;
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => serve(&flags),
        other => Err(containerd_shim::Error::InvalidArgument(format!(
            "unknown action {other:?}"
        ))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            1
        }
    }
}

fn new_shim(flags: &containerd_shim::Flags) -> VesselShim {
    let mut config = containerd_shim::Config::default();
    VesselShim::new(RUNTIME_ID, flags, &mut config)
}

fn start(flags: &containerd_shim::Flags) -> containerd_shim::Result<()> {
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = new_shim(flags).start_shim(opts)?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|err| containerd_shim::Error::IoError {
            context: "writing the shim address".into(),
            err,
        })
}

fn delete(flags: &containerd_shim::Flags) -> containerd_shim::Result<()> {
    let response = new_shim(flags).delete_shim()?;
    let mut out = std::io::stdout().lock();
    response.write_to_writer(&mut out)?;
    out.flush().map_err(|err| containerd_shim::Error::IoError {
        context: "writing the delete response".into(),
        err,
    })
}

fn serve(flags: &containerd_shim::Flags) -> containerd_shim::Result<()> {
    if flags.socket.is_empty() {
        return Err(containerd_shim::Error::InvalidArgument(
            "-socket is required".into(),
        ));
    }
    let (level, format) = vessel_runtime::Config::load(None)
        .map(|(c, _)| (c.runtime.log_level.clone(), c.log_format()))
        .unwrap_or_else(|_| ("info".to_string(), LogFormat::Text));
    // Logs go to the `log` fifo containerd made in the bundle; without one, nowhere.
    if let Err(e) = crate::logging::init(format, flags, &level) {
        eprintln!("{RUNTIME_ID}: logger: {e}");
    }
    let mut shim = new_shim(flags);
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")?;
    let task: Arc<dyn Task + Send + Sync> = Arc::new(shim.task_service(&ttrpc_address));

    let path = socket_path(&flags.socket);
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|err| containerd_shim::Error::IoError {
            context: format!("creating {}", parent.display()),
            err,
        })?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if socket_serving(&flags.socket) {
                // Another server for this pod won the race; it serves the address.
                signal_server_started();
                return Ok(());
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map_err(|err| containerd_shim::Error::IoError {
                context: format!("binding {path}"),
                err,
            })?
        }
        Err(err) => {
            return Err(containerd_shim::Error::IoError {
                context: format!("binding {path}"),
                err,
            })
        }
    };
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())?
        .register_service(task_methods(task))
        // Wait calls block a worker each until their process exits.
        .set_thread_count_max(256);
    server.start()?;
    signal_server_started();
    log::info!("serving {} for {}", flags.socket, flags.id);
    shim.wait();
    log::info!("shutting down");
    server.shutdown();
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Closes the stdout pipe the `start` process is reading, telling it the server is up.
fn signal_server_started() {
    if let Err(e) = nix::unistd::dup2_stdout(std::io::stderr()) {
        log::error!("closing stdout: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl Task for Nop {}

    #[test]
    fn serves_both_task_api_versions() {
        let m = task_methods(Arc::new(Nop));
        for method in [
            "Create", "Start", "Delete", "Exec", "Kill", "Wait", "State", "Shutdown", "Stats",
            "Connect",
        ] {
            assert!(
                m.contains_key(&format!("{V2_PREFIX}{method}")),
                "v2 {method} missing"
            );
            assert!(
                m.contains_key(&format!("{V3_PREFIX}{method}")),
                "v3 {method} missing"
            );
        }
        assert_eq!(m.len() % 2, 0);
    }
}
