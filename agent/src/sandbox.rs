//! The agent's state: the sandbox (hostname, DNS, storages) and its containers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vessel_protocol::errors::chain;

use nix::mount::{MntFlags, MsFlags};

use crate::container::cgroup_placement::CgroupPlacement;
use crate::container::cgroups::CgroupLayout;
use crate::container::mounts::{ensure_mountpoint, parse_options};
use crate::container::namespaces::NsKind;
use crate::container::spec::check_id;
use crate::container::{Container, CreateContext};
use crate::error::{RequestError, RequestResult};
use crate::oom::OomMonitor;
use crate::pod::PodNamespaces;
use crate::reaper::lock;
use crate::syscall::{RealSyscall, Syscall};

/// Most storages one request may ask for.
const MAX_STORAGES: usize = 64;

/// A storage description from the API.
#[derive(Debug, Clone)]
pub struct StorageSpec {
    pub driver: String,
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub mount_point: String,
}

/// Something the agent mounted, to unmount later.
#[derive(Debug)]
pub struct MountedStorage {
    mount_point: PathBuf,
}

impl MountedStorage {
    fn unmount(&self, sys: &dyn Syscall) {
        if let Err(e) = sys.umount2(&self.mount_point, MntFlags::empty()) {
            log::warn!("unmount {}: {e}; detaching", self.mount_point.display());
            let _ = sys.umount2(&self.mount_point, MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts storages in order; on failure unmounts what this call mounted.
pub fn mount_storages(
    sys: &dyn Syscall,
    specs: &[StorageSpec],
) -> RequestResult<Vec<MountedStorage>> {
    if specs.len() > MAX_STORAGES {
        return Err(RequestError::invalid(format!(
            "at most {MAX_STORAGES} storages per request"
        )));
    }
    let mut done: Vec<MountedStorage> = Vec::new();
    for s in specs {
        match mount_storage(sys, s) {
            Ok(m) => done.push(m),
            Err(e) => {
                done.iter().rev().for_each(|m| m.unmount(sys));
                return Err(e);
            }
        }
    }
    Ok(done)
}

fn mount_storage(sys: &dyn Syscall, s: &StorageSpec) -> RequestResult<MountedStorage> {
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute()
        || target
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(RequestError::invalid(format!(
            "storage mount_point {:?} must be an absolute path without '..'",
            s.mount_point
        )));
    }
    let opts = parse_options(&s.options);
    let data = opts.data_string();
    let data = (!data.is_empty()).then_some(data.as_str());
    let fail = |e: nix::Error| {
        RequestError::internal(format!(
            "mount {} storage {:?} at {}: {e}",
            s.driver, s.source, s.mount_point
        ))
    };
    match s.driver.as_str() {
        "virtiofs" | "blk" | "tmpfs" => {
            let fstype = match s.driver.as_str() {
                "virtiofs" => "virtiofs",
                "tmpfs" => "tmpfs",
                _ if s.fstype.is_empty() => {
                    return Err(RequestError::invalid("blk storage needs fstype"))
                }
                _ => s.fstype.as_str(),
            };
            ensure_mountpoint(&target, false).map_err(|e| RequestError::internal(chain(&e)))?;
            let source = if s.source.is_empty() {
                fstype
            } else {
                s.source.as_str()
            };
            sys.mount(
                Some(Path::new(source)),
                &target,
                Some(fstype),
                opts.flags,
                data,
            )
            .map_err(fail)?;
        }
        "bind" => {
            let src = Path::new(&s.source);
            let meta = fs::metadata(src).map_err(|e| {
                RequestError::invalid(format!("bind storage source {:?}: {e}", s.source))
            })?;
            ensure_mountpoint(&target, !meta.is_dir())
                .map_err(|e| RequestError::internal(chain(&e)))?;
            sys.mount(
                Some(src),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(fail)?;
            let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                let m = MountedStorage {
                    mount_point: target.clone(),
                };
                if let Err(e) = sys.mount(
                    None,
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                    None,
                ) {
                    m.unmount(sys);
                    return Err(fail(e));
                }
            }
        }
        other => {
            return Err(RequestError::invalid(format!(
                "unknown storage driver {other:?}"
            )))
        }
    }
    Ok(MountedStorage {
        mount_point: target,
    })
}

struct Entry {
    container: Arc<Container>,
    storages: Vec<MountedStorage>,
}

#[derive(Default)]
struct SandboxInfo {
    id: Option<String>,
    storages: Vec<MountedStorage>,
}

/// A container's place in its pod (CreateContainer's `pod_sandbox` / `pod_namespaces`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPlacement {
    /// This is the pod's sandbox container: its namespaces become the pod's.
    pub sandbox: bool,
    /// Namespaces to join from the pod.
    pub join: Vec<NsKind>,
    /// The sandbox container runs vessel's built-in pause (`container::builtin_pause`).
    pub builtin_pause: bool,
}

/// Host entropy and time for a guest that may have been restored from a snapshot
/// (see [`crate::freshness`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFreshness {
    pub entropy: Vec<u8>,
    /// 0: leave the clock alone.
    pub realtime_ns: i64,
}

/// All the agent's state.
pub struct Sandbox {
    containers: Mutex<HashMap<String, Entry>>,
    /// Ids being created or removed right now (so a duplicate create fails fast).
    busy: Mutex<HashSet<String>>,
    /// Where containers' cgroups go: flat in the guest, the spec's path on the host.
    cgroups: Result<CgroupPlacement, String>,
    pub oom: Arc<OomMonitor>,
    state_dir: PathBuf,
    info: Mutex<SandboxInfo>,
    /// The pod's namespaces, once its sandbox container exists.
    pod: Mutex<Option<PodNamespaces>>,
    pub pid1: bool,
    pub started: Instant,
}

impl Sandbox {
    pub fn new(state_dir: PathBuf, pid1: bool) -> std::io::Result<Sandbox> {
        fs::create_dir_all(&state_dir)?;
        let cgroups = CgroupLayout::detect()
            .map(|layout| CgroupPlacement::new(layout, pid1))
            .map_err(|e| {
                log::error!("cgroups: {e}", e = chain(&e));
                chain(&e)
            });
        Ok(Sandbox {
            containers: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            cgroups,
            oom: OomMonitor::start()?,
            state_dir,
            info: Mutex::new(SandboxInfo::default()),
            pod: Mutex::new(None),
            pid1,
            started: Instant::now(),
        })
    }

    fn resolv_conf_path(&self) -> PathBuf {
        self.state_dir.join("resolv.conf")
    }

    fn pod_ns_dir(&self) -> PathBuf {
        self.state_dir.join("pod/ns")
    }

    pub fn create_sandbox(
        &self,
        id: &str,
        hostname: &str,
        storages: &[StorageSpec],
        dns: &[String],
        fresh: &SandboxFreshness,
    ) -> RequestResult<()> {
        let mut info = lock(&self.info);
        if let Some(existing) = &info.id {
            return Err(RequestError::exists(format!(
                "sandbox {existing} already exists"
            )));
        }
        if hostname.len() > 64
            || dns.len() > 64
            || dns.iter().any(|l| l.len() > 256 || l.contains('\n'))
        {
            return Err(RequestError::invalid(
                "hostname over 64 bytes or bad dns lines",
            ));
        }
        crate::freshness::validate(&fresh.entropy, fresh.realtime_ns)?;
        // Step times for the debug log (on an emulating host this request takes seconds).
        let t0 = std::time::Instant::now();
        crate::freshness::apply(&fresh.entropy, fresh.realtime_ns, self.pid1)?;
        let t_fresh = t0.elapsed();
        if !hostname.is_empty() && self.pid1 {
            RealSyscall
                .sethostname(hostname)
                .map_err(|e| RequestError::internal(format!("sethostname: {e}")))?;
        }
        if !dns.is_empty() {
            let mut text = dns.join("\n");
            text.push('\n');
            fs::write(self.resolv_conf_path(), text)
                .map_err(|e| RequestError::internal(format!("writing resolv.conf: {e}")))?;
        }
        let t_names = t0.elapsed();
        info.storages = mount_storages(&RealSyscall, storages)?;
        log::debug!(
            "CreateSandbox: entropy and clock {t_fresh:?}, hostname and DNS {:?}, {} storages {:?}",
            t_names - t_fresh,
            storages.len(),
            t0.elapsed() - t_names
        );
        info.id = Some(id.to_string());
        Ok(())
    }

    /// Kills and removes every container, unmounts the sandbox storages.
    pub fn destroy_sandbox(&self) -> RequestResult<()> {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.remove_container(&id, Duration::from_secs(10)) {
                log::error!("destroying sandbox: container {id}: {e}");
                first_err.get_or_insert(e);
            }
        }
        if let Some(mut pod) = lock(&self.pod).take() {
            pod.release();
        }
        let mut info = lock(&self.info);
        info.storages
            .drain(..)
            .rev()
            .for_each(|m| m.unmount(&RealSyscall));
        info.id = None;
        let _ = fs::remove_file(self.resolv_conf_path());
        first_err.map_or(Ok(()), Err)
    }

    pub fn get(&self, id: &str) -> RequestResult<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .map(|e| e.container.clone())
            .ok_or_else(|| RequestError::not_found(format!("container {id:?} not found")))
    }

    /// UpdateContainer: new resources for container `id`.
    pub fn update_container(&self, id: &str, resources_json: &[u8]) -> RequestResult<()> {
        self.get(id)?.update(resources_json, self.cgroups()?)
    }

    fn cgroups(&self) -> RequestResult<&CgroupPlacement> {
        self.cgroups
            .as_ref()
            .map_err(|e| RequestError::precondition(format!("cgroups unavailable: {e}")))
    }

    /// Makes `count` spare cgroups for the next containers (before a snapshot:
    /// `crate::warmup`); how many there are.
    pub fn make_spare_cgroups(&self, count: usize) -> Result<usize, String> {
        let placement = self.cgroups.as_ref().map_err(Clone::clone)?;
        placement.make_spares(count).map_err(|e| chain(&e))
    }

    pub fn create_container(
        &self,
        id: &str,
        spec: &[u8],
        storages: &[StorageSpec],
        stdin: bool,
        pod: &PodPlacement,
    ) -> RequestResult<()> {
        check_id(id)?;
        {
            let containers = lock(&self.containers);
            let mut busy = lock(&self.busy);
            if containers.contains_key(id) || !busy.insert(id.to_string()) {
                return Err(RequestError::exists(format!(
                    "container {id:?} already exists"
                )));
            }
        }
        let result = self.create_unlocked(id, spec, storages, stdin, pod);
        lock(&self.busy).remove(id);
        result
    }

    fn create_unlocked(
        &self,
        id: &str,
        spec: &[u8],
        storages: &[StorageSpec],
        stdin: bool,
        pod: &PodPlacement,
    ) -> RequestResult<()> {
        let cgroups = self.cgroups()?;
        let pod_join = self.pod_join(pod)?;
        let mounted = mount_storages(&RealSyscall, storages)?;
        let resolv = self.resolv_conf_path();
        let ctx = CreateContext {
            cgroups,
            resolv_conf: resolv.exists().then_some(resolv.as_path()),
            pod_join: &pod_join,
            builtin_pause: pod.builtin_pause,
        };
        let created = Container::create(id, spec, stdin, &ctx).and_then(|c| {
            if pod.sandbox {
                if let Err(e) = self.pin_pod(id, &c) {
                    if let Err(d) = c.destroy(Duration::from_secs(10)) {
                        log::error!("container {id}: removing after failed pod setup: {d}");
                    }
                    return Err(e);
                }
            }
            Ok(c)
        });
        match created {
            Ok(c) => {
                self.oom.watch(id, c.cgroup());
                lock(&self.containers).insert(
                    id.to_string(),
                    Entry {
                        container: Arc::new(c),
                        storages: mounted,
                    },
                );
                Ok(())
            }
            Err(e) => {
                mounted.iter().rev().for_each(|m| m.unmount(&RealSyscall));
                Err(e)
            }
        }
    }

    /// The pinned pod namespaces a new container joins; checks the placement is possible.
    fn pod_join(&self, pod: &PodPlacement) -> RequestResult<Vec<(NsKind, PathBuf)>> {
        let pinned = lock(&self.pod);
        if pod.sandbox {
            if let Some(p) = pinned.as_ref() {
                return Err(RequestError::exists(format!(
                    "the pod already has a sandbox container ({})",
                    p.owner
                )));
            }
        }
        if pod.join.is_empty() {
            return Ok(Vec::new());
        }
        let Some(p) = pinned.as_ref() else {
            return Err(RequestError::precondition(
                "pod namespaces asked for, but the pod has no sandbox container",
            ));
        };
        Ok(p.paths_for(&pod.join))
    }

    /// Makes the new sandbox container's namespaces the pod's. On failure the caller
    /// destroys the container.
    fn pin_pod(&self, id: &str, c: &Container) -> RequestResult<()> {
        let mut pinned = lock(&self.pod);
        if pinned.is_some() {
            return Err(RequestError::exists(
                "the pod already has a sandbox container",
            ));
        }
        *pinned = Some(PodNamespaces::pin(id, c.init.pid, &self.pod_ns_dir())?);
        Ok(())
    }

    pub fn remove_container(&self, id: &str, timeout: Duration) -> RequestResult<()> {
        {
            let containers = lock(&self.containers);
            let mut busy = lock(&self.busy);
            if !containers.contains_key(id) {
                return Err(RequestError::not_found(format!(
                    "container {id:?} not found"
                )));
            }
            if !busy.insert(id.to_string()) {
                return Err(RequestError::precondition(format!(
                    "container {id:?} is busy (being created or removed)"
                )));
            }
        }
        let result = self.remove_unlocked(id, timeout);
        lock(&self.busy).remove(id);
        result
    }

    fn remove_unlocked(&self, id: &str, timeout: Duration) -> RequestResult<()> {
        let container = self.get(id)?;
        container.destroy(timeout)?;
        self.oom.unwatch(id);
        {
            let mut pinned = lock(&self.pod);
            if pinned.as_ref().is_some_and(|p| p.owner == id) {
                if let Some(mut p) = pinned.take() {
                    p.release();
                }
            }
        }
        if let Some(entry) = lock(&self.containers).remove(id) {
            entry
                .storages
                .iter()
                .rev()
                .for_each(|m| m.unmount(&RealSyscall));
        }
        Ok(())
    }
}
