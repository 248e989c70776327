//! The shim's lifecycle on the `containerd-shim` crate's [`Shim`] trait: `start` (find or spawn
//! the pod's shim), `delete` (clean up after a dead shim), the task service, and waiting for
//! Shutdown.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use vessel_protocol::errors::chain;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags, Shim, StartOpts};
use vessel_runtime::grouping::role_from_bundle;
use vessel_runtime::mounts::HostMounter;
use vessel_runtime::pod::cleanup_after_crash;
use vessel_runtime::vm::vmm::VmmBackend;
use vessel_runtime::Config;

use crate::events::ContainerdEvents;
use crate::task::{TaskService, TaskServiceDeps};

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.vessel.v2";

/// One shim process (serving one pod).
pub struct VesselShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    debug: bool,
    publish_binary: String,
    exit: Arc<ExitSignal>,
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> containerd_shim::Error + '_ {
    move |err| containerd_shim::Error::IoError {
        context: context.to_string(),
        err,
    }
}

/// `unix:///path` → `/path`.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Whether something accepts connections on the shim socket at `address`.
pub fn socket_serving(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

impl Shim for VesselShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        VesselShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            debug: args.debug,
            publish_binary: args.publish_binary.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// Returns the address of the pod's shim: an existing one (a CRI container joining its
    /// sandbox) or a new one spawned here, which serves once this returns.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let role = role_from_bundle(&self.bundle, &opts.id)
            .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
        let grouping = role.sandbox_id(&opts.id).to_string();
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        if socket_serving(&address) {
            containerd_shim::util::write_address(&address)?;
            return Ok(address);
        }
        let exe = std::env::current_exe().map_err(io_err("locating the shim binary"))?;
        let mut cmd = Command::new(exe);
        cmd.current_dir(&self.bundle)
            .args([
                "-namespace",
                &opts.namespace,
                "-id",
                &opts.id,
                "-address",
                &opts.address,
            ])
            .args(["-socket", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if !self.publish_binary.is_empty() {
            cmd.args(["-publish-binary", &self.publish_binary]);
        }
        if self.debug {
            cmd.arg("-debug");
        }
        if !opts.ttrpc_address.is_empty() {
            cmd.env("TTRPC_ADDRESS", &opts.ttrpc_address);
        }
        // Own process group: containerd's signals to this short-lived process stay here.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(io_err("spawning the shim server"))?;
        // The server closes its stdout once it serves (or dies).
        let mut out = Vec::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_end(&mut out);
        }
        if !socket_serving(&address) {
            let status = child.try_wait().ok().flatten();
            return Err(containerd_shim::Error::Other(format!(
                "shim server for {grouping} is not serving {address} (exit: {status:?})"
            )));
        }
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// Called by containerd after the shim is gone (or failed to start): release whatever the
    /// container's sandbox left on the host.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let cleaned = Config::load(None)
            .map_err(|e| format!("vessel configuration: {e}", e = chain(&e)))
            .and_then(|(config, _)| {
                cleanup_after_crash(
                    &config,
                    &self.namespace,
                    &self.id,
                    &self.bundle,
                    &HostMounter,
                )
                .map_err(|e| chain(&e))
            });
        if let Err(e) = cleaned {
            let msg = format!("cleaning up {}: {e}", self.id);
            log::error!("{msg}");
            return Err(containerd_shim::Error::Other(msg));
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 128 + 9,
            exited_at: Some(containerd_shim::util::timestamp()?).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // Let the Shutdown reply reach containerd before the server goes.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// The crate's entry point would hand us its publisher; ours (`bootstrap.rs`) calls
    /// [`VesselShim::task_service`] with containerd's ttrpc address instead, so events can
    /// reconnect after containerd restarts.
    fn create_task_service(&self, _publisher: RemotePublisher) -> TaskService {
        self.task_service(&std::env::var("TTRPC_ADDRESS").unwrap_or_default())
    }
}

impl VesselShim {
    /// The task service, publishing events to containerd's ttrpc address.
    pub fn task_service(&self, ttrpc_address: &str) -> TaskService {
        let config = Config::load(None)
            .map(|(c, origin)| {
                log::info!("configuration from {origin}");
                Arc::new(c)
            })
            .map_err(Arc::new);
        if let Err(e) = &config {
            log::error!("{}", chain(e.as_ref()));
        }
        let events = ContainerdEvents::new(ttrpc_address, self.namespace.clone())
            .unwrap_or_else(|e| panic!("cannot start the event thread: {e}"));
        let backend = match &config {
            Ok(c) => vessel_runtime::vm::backend_from_config(c),
            Err(_) => Arc::new(VmmBackend::default()),
        };
        if let Ok(c) = &config {
            if c.hypervisor.backend == "host-agent" {
                log::warn!("backend host-agent: containers run on the host with NO VM isolation");
            }
        }
        TaskService::new(TaskServiceDeps {
            namespace: self.namespace.clone(),
            events: Arc::new(events),
            config,
            backend,
            mounter: Arc::new(HostMounter),
            exit: Arc::clone(&self.exit),
        })
    }
}
