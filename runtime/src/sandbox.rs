//! A sandbox: one VM (or host agent), its agent connection, its state dir and its mounts.
//! Every path out of [`Sandbox::start`] that fails, and [`Sandbox::stop`], release every host
//! resource: the VMM process, mounts, sockets and the state directory.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vessel_protocol::errors::chain;

use oci_spec::runtime::{LinuxResources, Process, Spec};
use vessel_protocol::agent as pb;

use crate::agent::{code, Agent, AgentError};
use crate::cleanup::{cleanup_sandbox_dir, CleanupError};
use crate::config::Config;
use crate::host_cgroup::{HostCgroup, HostCgroupError};
use crate::mounts::Mounter;
use crate::pod::namespaces::Translated;
use crate::share::{apply_share, plan_container_share, release_share, ShareError};
use crate::state::{RecordedMount, SandboxPaths, SandboxStateFile, StateError};
use crate::vm::{ExitInfo, LaunchRequest, VmBackend, VmError, VmInstance};

/// Wires the pod's network namespace to the VM's NIC when there is one to wire: what will be
/// made is recorded in `state` (and its file) first, so cleanup undoes it whatever fails.
fn wire_network(
    opts: &SandboxOptions,
    paths: &SandboxPaths,
    state: &mut SandboxStateFile,
) -> Result<Option<crate::network::PodNetwork>, SandboxError> {
    let Some(netns) = &opts.netns else {
        return Ok(None);
    };
    if !opts.backend.has_nic() {
        log::info!(
            "sandbox {}: the machine has no NIC; network namespace {} is not wired",
            opts.id,
            netns.display()
        );
        return Ok(None);
    }
    let net_err = |source| SandboxError::Network {
        sandbox: opts.id.clone(),
        source,
    };
    let guest = crate::network::discover(netns).map_err(net_err)?;
    let record = crate::network::NetworkRecord {
        netns: netns.clone(),
        veth: guest.name.clone(),
        tap: crate::network::TAP_NAME.to_string(),
    };
    state.network = Some(record.clone());
    state.write(&paths.state_file())?;
    let tap = crate::network::connect(netns, &guest.name, guest.mtu).map_err(net_err)?;
    log::info!(
        "sandbox {}: network {}: {} ({}) ↔ tap {}",
        opts.id,
        netns.display(),
        guest.name,
        crate::network::mac_string(&guest.mac),
        crate::network::TAP_NAME
    );
    Ok(Some(crate::network::PodNetwork { record, tap, guest }))
}

/// Per-attempt bound on the agent's health check while waiting for it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// A sandbox operation failed. Each variant's inner error names the sandbox and the step.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    #[error("sandbox {sandbox}: wiring the pod's network")]
    Network {
        sandbox: String,
        #[source]
        source: crate::network::NetworkError,
    },
    #[error("sandbox {sandbox}: placing the VMM in the pod's cgroup")]
    Cgroup {
        sandbox: String,
        #[source]
        source: HostCgroupError,
    },
    #[error("sandbox {sandbox} already exists (its VMM, pid {pid}, is running)")]
    AlreadyExists { sandbox: String, pid: i32 },
    #[error("sandbox {sandbox}: agent failed during {step}: {source}\n{diagnostics}")]
    AgentStartup {
        sandbox: String,
        step: &'static str,
        source: Box<AgentError>,
        diagnostics: String,
    },
    #[error("sandbox {sandbox}: stopped")]
    Stopped { sandbox: String },
}

impl SandboxError {
    /// The agent's status code, when the agent answered with an error.
    pub fn agent_code(&self) -> Option<i32> {
        match self {
            SandboxError::Agent(e) => e.code(),
            _ => None,
        }
    }
}

/// What is needed to start a sandbox.
pub struct SandboxOptions {
    pub id: String,
    /// containerd namespace: with the id, it names the state dir.
    pub namespace: String,
    pub hostname: String,
    /// The configuration, with the VM's size for this pod in `hypervisor`.
    pub config: Arc<Config>,
    pub backend: Arc<dyn VmBackend>,
    pub mounter: Arc<dyn Mounter>,
    /// The host cgroup the VMM runs in (the sandbox spec's `cgroupsPath`).
    pub cgroup: Option<HostCgroup>,
    /// A CRI pod: the agent mounts the pod's shm tmpfs (see [`Sandbox::guest_pod_shm`]).
    pub pod_shm: bool,
    /// The pod's network namespace on the host (CNI's, from the sandbox spec): wired to the
    /// VM's NIC (`crate::network`). `None`: the guest has `lo` only.
    pub netns: Option<PathBuf>,
    /// The Kubernetes pod (name, namespace) of a CRI sandbox: recorded for metrics.
    pub cri_pod: Option<(String, String)>,
}

/// Size of a pod's /dev/shm, as containerd's CRI gives a runc pod.
const POD_SHM_OPTIONS: [&str; 5] = ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"];

/// A container's placement in the sandbox.
pub struct ContainerConfig<'a> {
    pub id: &'a str,
    /// OCI spec as containerd wrote it (host paths), namespaces already translated.
    pub spec: &'a Spec,
    /// The container's rootfs on the host, mounted (normally `<bundle>/rootfs`).
    pub host_rootfs: &'a Path,
    /// Keep a stdin pipe for the init process.
    pub stdin: bool,
    /// What the container shares with its pod.
    pub pod: &'a Translated,
    /// The pod's `/dev/shm` in the guest, for the CRI shm bind (None: not a CRI pod).
    pub guest_pod_shm: Option<&'a Path>,
}

/// A running sandbox.
pub struct Sandbox {
    id: String,
    config: Arc<Config>,
    paths: SandboxPaths,
    vm: Box<dyn VmInstance>,
    agent: Agent,
    mounter: Arc<dyn Mounter>,
    state: Mutex<SandboxStateFile>,
    vm_gone: Arc<AtomicBool>,
    stopped: AtomicBool,
    /// The pod's interface in the guest, when its network is wired.
    network: Option<crate::network::GuestInterface>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Creates the state dir, starts the VM, waits for its agent and creates the sandbox in it.
    /// On failure nothing is left behind: no process, mount, socket or directory.
    pub fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let paths = SandboxPaths::new(&opts.config.runtime.state_root, &opts.namespace, &opts.id)?;
        if paths.dir().exists() {
            // A live pod keeps its id: never kill it for a second create with that id.
            if let Ok(Some(st)) = SandboxStateFile::read(&paths.state_file()) {
                if let Some(vmm) = st.vmm.filter(|v| v.is_alive()) {
                    return Err(SandboxError::AlreadyExists {
                        sandbox: opts.id.clone(),
                        pid: vmm.pid,
                    });
                }
            }
            log::warn!("sandbox {}: removing leftovers of an earlier run", opts.id);
            cleanup_sandbox_dir(
                &paths,
                opts.mounter.as_ref(),
                opts.config.shutdown_timeout(),
            )?;
        }
        paths.create()?;
        let t_start = Instant::now();
        let mut state = SandboxStateFile::new(&opts.id);
        state.cri_pod = opts.cri_pod.clone();
        if let Some(cg) = &opts.cgroup {
            state.cgroup = cg.dirs();
        }
        let early_cleanup = || {
            let _ = cleanup_sandbox_dir(
                &paths,
                opts.mounter.as_ref(),
                opts.config.shutdown_timeout(),
            );
            paths.remove_empty_namespace_dir();
        };
        // Recorded before it exists, so a crash from here on leaves it to cleanup.
        if let Err(e) = state.write(&paths.state_file()) {
            early_cleanup();
            return Err(e.into());
        }
        if let Some(cg) = &opts.cgroup {
            if let Err(source) = cg.create() {
                early_cleanup();
                return Err(SandboxError::Cgroup {
                    sandbox: opts.id.clone(),
                    source,
                });
            }
        }
        if opts.config.hypervisor.jail && opts.backend.runs_in_pod_cgroup() {
            // The jailed VMM sees the runtime's later binds under shared/ only through mount
            // propagation: make shared/ a shared mount before it copies the mount table.
            if let Err(source) = opts.mounter.share_subtree(&paths.shared()) {
                early_cleanup();
                return Err(SandboxError::Share(ShareError::Mount {
                    container: opts.id.clone(),
                    source,
                }));
            }
        }
        let pod_net = match wire_network(&opts, &paths, &mut state) {
            Ok(n) => n,
            Err(e) => {
                early_cleanup();
                return Err(e);
            }
        };
        let req = LaunchRequest {
            sandbox_id: &opts.id,
            paths: &paths,
            config: &opts.config,
            cgroup: opts.cgroup.as_ref(),
            tap: pod_net.as_ref().map(|n| n.tap.as_fd()),
        };
        let t_launch = Instant::now();
        let launched = opts.backend.launch(&req);
        let launch_took = t_launch.elapsed();
        // The VMM holds the tap now (or nothing does, and it is gone).
        let network = pod_net.map(|n| n.guest);
        let vm = match launched {
            Ok(vm) => vm,
            Err(e) => {
                early_cleanup();
                return Err(e.into());
            }
        };
        let cleanup_vm = |vm: &dyn VmInstance| {
            vm.process().kill_and_wait(opts.config.shutdown_timeout());
            if let Err(e) = cleanup_sandbox_dir(
                &paths,
                opts.mounter.as_ref(),
                opts.config.shutdown_timeout(),
            ) {
                log::error!(
                    "sandbox {}: cleanup after failed start: {e}",
                    opts.id,
                    e = chain(&e)
                );
            }
            paths.remove_empty_namespace_dir();
        };
        state.vmm = vm.process().identity();
        if let Err(e) = state.write(&paths.state_file()) {
            cleanup_vm(vm.as_ref());
            return Err(e.into());
        }

        let vm_gone = Arc::new(AtomicBool::new(false));
        {
            let flag = Arc::clone(&vm_gone);
            let sid = opts.id.clone();
            let name = vm.process().name().to_string();
            vm.process().on_exit(move |e: ExitInfo| {
                flag.store(true, Ordering::SeqCst);
                log::info!("sandbox {sid}: {name} {e}");
            });
        }
        let t_agent = Instant::now();
        let deadline = t_agent + opts.config.agent_timeout();
        let agent = match connect_agent(&opts.id, vm.as_ref(), deadline, &opts.config, &vm_gone) {
            Ok(a) => a,
            Err(e) => {
                cleanup_vm(vm.as_ref());
                return Err(e);
            }
        };
        // A VM restored from a snapshot shares the snapshot's RNG state and wall clock with
        // every other one: give it fresh entropy and the time.
        let mut storages = vm.sandbox_storages();
        if opts.pod_shm {
            storages.push(pb::Storage {
                driver: "tmpfs".into(),
                source: "shm".into(),
                options: POD_SHM_OPTIONS.iter().map(|o| o.to_string()).collect(),
                mount_point: guest_pod_shm(vm.as_ref()).display().to_string(),
                ..Default::default()
            });
        }
        let (interfaces, routes) = network
            .as_ref()
            .map(crate::network::agent_interface)
            .map_or((Vec::new(), Vec::new()), |(i, r)| (vec![i], r));
        let create = pb::CreateSandboxRequest {
            sandbox_id: opts.id.clone(),
            hostname: opts.hostname.clone(),
            storages,
            entropy: host_entropy(),
            realtime_ns: realtime_ns(),
            interfaces,
            routes,
            ..Default::default()
        };
        let agent_took = t_agent.elapsed();
        let t_create = Instant::now();
        if let Err(source) = agent.create_sandbox(&create) {
            let diagnostics = vm.diagnostics();
            cleanup_vm(vm.as_ref());
            return Err(SandboxError::AgentStartup {
                sandbox: opts.id.clone(),
                step: "CreateSandbox",
                source: Box::new(source),
                diagnostics,
            });
        }
        // The stages of a pod start (vessel-bench reads this line's time).
        log::info!(
            "sandbox {}: ready (machine started {:?}, agent answered {:?}, CreateSandbox {:?})",
            opts.id,
            launch_took,
            agent_took,
            t_create.elapsed()
        );
        state.start_ms = Some(u64::try_from(t_start.elapsed().as_millis()).unwrap_or(u64::MAX));
        state.restored = Some(vm.restored());
        if let Err(e) = state.write(&paths.state_file()) {
            // Only metrics read it: the pod runs on.
            log::warn!(
                "sandbox {}: recording its start time: {}",
                opts.id,
                chain(&e)
            );
        }
        Ok(Sandbox {
            id: opts.id,
            config: opts.config,
            paths,
            vm,
            agent,
            mounter: opts.mounter,
            state: Mutex::new(state),
            vm_gone,
            stopped: AtomicBool::new(false),
            network,
        })
    }

    /// Whether the pod's network is wired to the VM's NIC (the guest's root network
    /// namespace then is the pod's).
    pub fn has_network(&self) -> bool {
        self.network.is_some()
    }

    /// Whether the machine's root network namespace is the pod's alone (a VM's).
    pub fn network_is_the_pods(&self) -> bool {
        self.vm.network_is_the_pods()
    }

    /// The pod's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether stopping the sandbox ends its containers too (a VM), so removing them in the
    /// agent first is wasted work.
    pub fn stop_ends_containers(&self) -> bool {
        self.vm.kill_ends_everything()
    }

    pub(crate) fn agent(&self) -> &Agent {
        &self.agent
    }
    /// The pod's shm tmpfs in the guest (mounted at CreateSandbox when `pod_shm`).
    pub fn guest_pod_shm(&self) -> PathBuf {
        guest_pod_shm(self.vm.as_ref())
    }
    /// Pid of the VMM (or host agent) process.
    pub fn vmm_pid(&self) -> i32 {
        self.vm.process().pid()
    }
    fn ensure_running(&self) -> Result<(), SandboxError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(SandboxError::Stopped {
                sandbox: self.id.clone(),
            });
        }
        Ok(())
    }

    fn save_state(&self, f: impl FnOnce(&mut SandboxStateFile)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        if let Err(e) = s.write(&self.paths.state_file()) {
            log::error!("sandbox {}: saving state: {e}", self.id, e = chain(&e));
        }
    }

    /// Shares the container's rootfs and volumes with the guest and creates it in the agent.
    /// On failure the shares are released again.
    pub fn create_container(&self, c: ContainerConfig<'_>) -> Result<(), SandboxError> {
        self.ensure_running()?;
        let plan = plan_container_share(
            c.spec,
            c.id,
            c.host_rootfs,
            &self.vm.guest_shared_dir(),
            c.guest_pod_shm,
        )?;
        // Before the rootfs is shared: see `crate::mountpoints`. A built-in pause mounts nothing.
        if !c.pod.builtin_pause {
            match crate::mountpoints::precreate(c.host_rootfs, c.spec) {
                Ok(made) => log::debug!(
                    "sandbox {}: container {}: mount points made on the host {:?}, left to the agent {:?}",
                    self.id,
                    c.id,
                    made.created,
                    made.skipped
                ),
                Err(e) => log::debug!(
                    "sandbox {}: container {}: no mount points made on the host: {e}",
                    self.id,
                    c.id
                ),
            }
        }
        let shared = self.paths.shared();
        let applied = apply_share(&plan, c.id, &shared, self.mounter.as_ref(), &mut |rec| {
            let m = RecordedMount {
                container: c.id.to_string(),
                record: rec.clone(),
            };
            self.save_state(|s| s.mounts.push(m));
        });
        if let Err(e) = applied {
            // apply_share unmounted what it made; drop the records.
            self.save_state(|s| s.mounts.retain(|m| m.container != c.id));
            return Err(e.into());
        }
        if let Err(e) = self
            .agent
            .create_container(c.id, &plan.spec, c.stdin, c.pod)
        {
            if let Err(r) = self.release_container_share(c.id) {
                log::error!("sandbox {}: container {}: rollback: {r}", self.id, c.id);
            }
            return Err(e.into());
        }
        Ok(())
    }

    fn release_container_share(&self, cid: &str) -> Result<(), SandboxError> {
        let records = self.recorded_mounts(cid);
        release_share(&self.paths.shared(), cid, &records, self.mounter.as_ref())?;
        self.save_state(|s| s.mounts.retain(|m| m.container != cid));
        Ok(())
    }

    fn recorded_mounts(&self, cid: &str) -> Vec<crate::safe_mount::MountRecord> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.mounts
            .iter()
            .filter(|m| m.container == cid)
            .map(|m| m.record.clone())
            .collect()
    }

    /// Removes the container from the agent (killing what is left of it) and unmounts its
    /// shares. A container the agent no longer knows, or a dead VM, is not an error here.
    pub fn remove_container(&self, cid: &str) -> Result<(), SandboxError> {
        if !self.stopped.load(Ordering::SeqCst) && !self.vm_gone.load(Ordering::SeqCst) {
            let timeout =
                u32::try_from(self.config.runtime.shutdown_timeout_secs).unwrap_or(u32::MAX);
            match self.agent.remove_container(cid, timeout) {
                Ok(()) => {}
                Err(e) if e.code() == Some(code::NOT_FOUND) || e.is_transport() => {
                    log::info!("sandbox {}: remove {cid}: {e}", self.id, e = chain(&e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.release_container_share(cid)
    }

    pub fn start_container(&self, cid: &str) -> Result<u32, SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.start_container(cid)?)
    }

    pub fn exec_process(
        &self,
        cid: &str,
        exec_id: &str,
        process: &Process,
        stdin: bool,
    ) -> Result<u32, SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.exec_process(cid, exec_id, process, stdin)?)
    }

    pub fn signal_process(
        &self,
        cid: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.signal_process(cid, exec_id, signal, all)?)
    }

    /// Blocks until the process exits: (status, exited_at Unix ns).
    pub fn wait_process(&self, cid: &str, exec_id: &str) -> Result<(i32, u64), SandboxError> {
        Ok(self.agent.wait_process(cid, exec_id)?)
    }

    pub fn pause_container(&self, cid: &str) -> Result<(), SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.pause_container(cid)?)
    }

    pub fn resume_container(&self, cid: &str) -> Result<(), SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.resume_container(cid)?)
    }

    pub fn stats_container(&self, cid: &str) -> Result<pb::StatsContainerResponse, SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.stats_container(cid)?)
    }

    pub fn update_container(
        &self,
        cid: &str,
        resources: &LinuxResources,
    ) -> Result<(), SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.update_container(cid, resources)?)
    }

    /// Makes the agent forget an exited exec. An exec it no longer knows, or a dead VM, is
    /// not an error here.
    pub fn delete_process(&self, cid: &str, exec_id: &str) -> Result<(), SandboxError> {
        if self.stopped.load(Ordering::SeqCst) || self.vm_gone.load(Ordering::SeqCst) {
            return Ok(());
        }
        match self.agent.delete_process(cid, exec_id) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(code::NOT_FOUND) || e.is_transport() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list_processes(&self, cid: &str) -> Result<Vec<u32>, SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.list_processes(cid)?)
    }

    pub fn resize_tty(
        &self,
        cid: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), SandboxError> {
        self.ensure_running()?;
        Ok(self.agent.tty_win_resize(cid, exec_id, rows, cols)?)
    }

    /// Whether [`Sandbox::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Writes the guest's stats for `vessel monitor` (`pod::guest_stats`) into the state dir,
    /// atomically; nothing once the sandbox is stopping (its directory is going away).
    pub fn record_guest_stats(&self, bytes: &[u8]) -> std::io::Result<()> {
        let _state = vessel_protocol::sync::lock(&self.state);
        if self.is_stopped() {
            return Ok(());
        }
        let path = self.paths.dir().join(crate::pod::guest_stats::FILE_NAME);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// Destroys the sandbox in the agent (best effort, bounded), kills the VM, unmounts and
    /// removes the state dir. Idempotent.
    pub fn stop(&self) -> Result<(), SandboxError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // A guest stats write in flight finishes before the directory goes (it holds the
        // state lock; any later one sees `stopped`).
        drop(vessel_protocol::sync::lock(&self.state));
        let timeout = self.config.shutdown_timeout();
        // A VM's containers die with it, and nothing of the guest is worth saving (virtio-fs
        // writes go through at once): kill it. Asking the agent first costs seconds on an
        // emulating host — long enough for containerd to give up on the Delete. Processes of
        // the host-agent backend outlive their agent, so it is asked to remove them.
        if !self.vm.kill_ends_everything() && !self.vm_gone.load(Ordering::SeqCst) {
            if let Err(e) = self.agent.destroy_sandbox(timeout) {
                log::info!("sandbox {}: DestroySandbox: {e}", self.id, e = chain(&e));
            }
        }
        let t_kill = Instant::now();
        if self.vm.process().kill_and_wait(timeout).is_none() {
            log::error!(
                "sandbox {}: {} pid {} did not exit {timeout:?} after SIGKILL",
                self.id,
                self.vm.process().name(),
                self.vm.process().pid()
            );
        }
        let killed_after = t_kill.elapsed();
        let t_clean = Instant::now();
        cleanup_sandbox_dir(&self.paths, self.mounter.as_ref(), timeout)?;
        self.paths.remove_empty_namespace_dir();
        log::info!(
            "sandbox {}: stopped, state removed (machine gone after {killed_after:?}, cleanup {:?})",
            self.id,
            t_clean.elapsed()
        );
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("sandbox {}: stop on drop: {e}", self.id, e = chain(&e));
        }
    }
}

fn guest_pod_shm(vm: &dyn VmInstance) -> PathBuf {
    vm.guest_pod_dir().join("shm")
}

/// Bytes of host randomness sent to the guest at CreateSandbox.
const ENTROPY_BYTES: usize = 64;

/// Random bytes from the host's CRNG (empty, logged, if it cannot be read: the guest then
/// keeps its own pool, which is still seeded, just not distinct from its snapshot siblings).
fn host_entropy() -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; ENTROPY_BYTES];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)) {
        Ok(()) => buf,
        Err(e) => {
            log::error!("reading /dev/urandom for the guest: {e}");
            Vec::new()
        }
    }
}

/// The host's CLOCK_REALTIME in ns since the epoch.
fn realtime_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Connects to the agent and waits until it answers Check, retrying until `deadline`.
fn connect_agent(
    sid: &str,
    vm: &dyn VmInstance,
    deadline: Instant,
    config: &Config,
    vm_gone: &Arc<AtomicBool>,
) -> Result<Agent, SandboxError> {
    loop {
        let stream = vm.connect_agent(deadline)?;
        let agent = Agent::new(stream, sid, config.agent_timeout(), Arc::clone(vm_gone))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match agent.check(remaining.clamp(Duration::from_secs(1), CHECK_TIMEOUT)) {
            Ok(r) => {
                log::info!(
                    "sandbox {sid}: agent {} {} (guest uptime {} ms)",
                    r.status,
                    r.version,
                    r.uptime_ms
                );
                return Ok(agent);
            }
            Err(e) if Instant::now() < deadline && vm.process().exit_status().is_none() => {
                log::debug!("sandbox {sid}: agent not ready: {e}", e = chain(&e));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(source) => {
                return Err(SandboxError::AgentStartup {
                    sandbox: sid.to_string(),
                    step: "Check",
                    source: Box::new(source),
                    diagnostics: vm.diagnostics(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_entropy_and_time_for_the_guest() {
        let a = host_entropy();
        let b = host_entropy();
        assert_eq!(a.len(), ENTROPY_BYTES);
        assert_ne!(a, b, "two sandboxes get different bytes");
        let now = realtime_ns();
        // After 2020-01-01 and within a second of the std clock.
        assert!(now > 1_577_836_800_000_000_000, "{now}");
        let std_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((std_now - now).abs() < 1_000_000_000);
    }
}
