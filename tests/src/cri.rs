//! The CRI layer: containerd 1.6's CRI plugin driven as kubelet would, through a blocking
//! client.
//!
//! [`CriContainerd::start`] runs the test's own containerd (see [`crate::containerd`]) with
//! the CRI plugin enabled: runtime handlers `runc` (the default, the control) and `vessel`
//! (`io.containerd.vessel.v2`), a CNI bridge + host-local network on a private /24 of its own
//! (its own bridge name, route-checked, no masquerade, no default route in pods), netns mounts
//! in its own state dir, `restrict_oom_score_adj` (this host has no CAP_SYS_RESOURCE), and two
//! images built from busybox-static and imported into `k8s.io`: [`BUSYBOX_IMAGE`] and the
//! pause image [`PAUSE_IMAGE`]. [`CriClient`] is a blocking client (tonic on a current-thread
//! tokio runtime) over containerd's Unix socket, so tests read sequentially. Dropping a
//! [`CriContainerd`] stops and removes every pod, stops containerd, unmounts what is left under
//! its dir, deletes the bridge it created and the pods' cgroup parent.
//!
//! ```no_run
//! use vessel_tests::cri::{CriContainerd, RUNC_HANDLER};
//! let cri = CriContainerd::start(None).unwrap();
//! let pod = cri.run_pod("demo", RUNC_HANDLER).unwrap();
//! let id = cri.create_and_start(&pod, "c1", &["sleep", "inf"]).unwrap();
//! let out = cri.client().exec_sync(&id, &["echo", "hi"], 30).unwrap();
//! assert_eq!(out.stdout, b"hi\n");
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_cri::v1 as cri;

use crate::containerd::{
    build_oci_tar, mounts_under, pause_image, target_dir, workspace_binary, BusyboxImage,
    Containerd, APPLETS,
};

pub mod client;
pub mod logs;
pub mod net;

pub use client::CriClient;

pub use logs::{is_rfc3339_nano, log_messages, parse_log, parse_log_line, LogEntry};

/// The busybox image for CRI containers (every applet of [`APPLETS`]).
pub const BUSYBOX_IMAGE: &str = "localhost/vessel-busybox:latest";
/// The pause (sandbox) image: busybox `sleep inf`.
pub const PAUSE_IMAGE: &str = "localhost/vessel-pause:latest";
/// containerd's namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The CRI runtime handler of runc (the default handler).
pub const RUNC_HANDLER: &str = "runc";
/// The CRI runtime handler of vessel (`io.containerd.vessel.v2`).
pub const VESSEL_HANDLER: &str = "vessel";

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// What a vessel runtime config for a test or bench run is made of.
#[derive(Debug, Clone)]
pub struct VesselConfigSpec {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub agent_timeout_secs: u64,
    pub log_level: String,
    /// `runtime.log_format`: `text` or `json`.
    pub log_format: String,
    /// More TOML appended verbatim (whole tables, e.g. `[snapshot]\nenabled = false\n`).
    pub extra_toml: String,
}

impl VesselConfigSpec {
    /// From this workspace and the environment: `target/<profile>/vessel-vmm` (and the shim)
    /// must be built; kernel and initrd from `VESSEL_KERNEL` / `VESSEL_INITRD` (default
    /// /usr/local/share/vessel/{vmlinux,initrd.cpio}) must exist; `VESSEL_TEST_AGENT_TIMEOUT`
    /// (s, default 600) bounds a boot. Errors say what is missing.
    pub fn from_env() -> Result<VesselConfigSpec> {
        let vmm = workspace_binary("vessel-vmm", "vessel-vmm")?;
        workspace_binary("containerd-shim-vessel-v2", "containerd-shim-vessel-v2")?;
        let var = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        let kernel = PathBuf::from(var("VESSEL_KERNEL", "/usr/local/share/vessel/vmlinux"));
        let initrd = PathBuf::from(var("VESSEL_INITRD", "/usr/local/share/vessel/initrd.cpio"));
        for (what, p) in [
            ("kernel (VESSEL_KERNEL)", &kernel),
            ("initrd (VESSEL_INITRD)", &initrd),
        ] {
            if !p.is_file() {
                bail!(
                    "guest {what} {} missing: build it with scripts/artifacts.sh",
                    p.display()
                );
            }
        }
        let agent_timeout_secs = var("VESSEL_TEST_AGENT_TIMEOUT", "600")
            .parse()
            .context("VESSEL_TEST_AGENT_TIMEOUT")?;
        Ok(VesselConfigSpec {
            vmm,
            kernel,
            initrd,
            agent_timeout_secs,
            log_level: "debug".into(),
            log_format: "text".into(),
            extra_toml: String::new(),
        })
    }
}

/// A vessel runtime config file with its own state root, in a temp dir under /tmp.
pub struct VesselTestConfig {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl VesselTestConfig {
    /// Writes `vessel.toml` (backend `vmm`, state root `<tmp>/state`).
    pub fn write(spec: &VesselConfigSpec) -> Result<VesselTestConfig> {
        let dir = tempfile::Builder::new()
            .prefix("vstate")
            .tempdir_in("/tmp")?;
        let path = dir.path().join("vessel.toml");
        let text = format!(
            "[hypervisor]\nbackend = \"vmm\"\npath = \"{}\"\nkernel = \"{}\"\ninitrd = \"{}\"\n\
             [runtime]\nstate_root = \"{}\"\nagent_timeout_secs = {}\nlog_level = \"{}\"\n\
             log_format = \"{}\"\n{}",
            spec.vmm.display(),
            spec.kernel.display(),
            spec.initrd.display(),
            dir.path().join("state").display(),
            spec.agent_timeout_secs,
            spec.log_level,
            spec.log_format,
            spec.extra_toml
        );
        std::fs::write(&path, text)?;
        Ok(VesselTestConfig { dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The runtime's state root (one dir per sandbox while it lives).
    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Entries left in the state root.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.state_root())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for VesselTestConfig {
    fn drop(&mut self) {
        if !mounts_under(self.dir.path()).is_empty() {
            eprintln!(
                "{}: mounts left, not removing it",
                self.dir.path().display()
            );
            self.dir.disable_cleanup(true);
        }
    }
}

/// How [`CriContainerd::start_with`] starts containerd.
#[derive(Debug, Clone, Default)]
pub struct CriOptions {
    /// `VESSEL_CONFIG` for the vessel shims.
    pub vessel_config: Option<PathBuf>,
    /// Put first in containerd's PATH (where `containerd-shim-vessel-v2` is) [default:
    /// this workspace's `target/<profile>`].
    pub shim_dir: Option<PathBuf>,
    /// More environment for containerd and its shims.
    pub env: Vec<(String, String)>,
}

/// A containerd with its CRI plugin, a CNI network and the images, owned by a test.
pub struct CriContainerd {
    ctrd: Option<Containerd>,
    client: CriClient,
    net: net::CniNet,
    cgroup_parent: String,
}

impl CriContainerd {
    /// Starts containerd with the CRI plugin, `vessel_config` as `VESSEL_CONFIG`, waits until
    /// CRI reports RuntimeReady and NetworkReady, and imports both images.
    pub fn start(vessel_config: Option<&Path>) -> Result<CriContainerd> {
        CriContainerd::start_with(CriOptions {
            vessel_config: vessel_config.map(Path::to_path_buf),
            ..CriOptions::default()
        })
    }

    pub fn start_with(opts: CriOptions) -> Result<CriContainerd> {
        if !Path::new("/usr/lib/cni/bridge").is_file() {
            bail!("/usr/lib/cni/bridge missing: apt-get install containernetworking-plugins");
        }
        let net = net::CniNet::pick()?;
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let cgroup_parent = format!("/vessel-cri-test-{}-{n}", std::process::id());
        let shim_dir = opts.shim_dir.clone().unwrap_or_else(target_dir);
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut env: Vec<(String, String)> = vec![("PATH".into(), path)];
        if let Some(c) = &opts.vessel_config {
            env.push(("VESSEL_CONFIG".into(), c.display().to_string()));
        }
        env.extend(opts.env.iter().cloned());
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ctrd = Containerd::start_with_cri(&env_refs, &|dir| {
            let conf = dir.join("cni/conf");
            std::fs::create_dir_all(&conf)?;
            std::fs::write(
                conf.join("10-vessel-cri.conflist"),
                net.conflist(&dir.join("cni/ipam")),
            )?;
            Ok(cri_config(dir))
        })?;
        let client = CriClient::connect(&ctrd.socket())
            .with_context(|| format!("connecting CRI:\n{}", ctrd.log_tail()))?;
        let cri = CriContainerd {
            ctrd: Some(ctrd),
            client,
            net,
            cgroup_parent,
        };
        cri.wait_ready(Duration::from_secs(60))?;
        cri.import_images()?;
        Ok(cri)
    }

    pub fn client(&self) -> &CriClient {
        &self.client
    }

    pub fn containerd(&self) -> &Containerd {
        self.ctrd.as_ref().expect("containerd runs until drop")
    }

    /// containerd's temp dir (root, state, sockets, CNI config, pod logs).
    pub fn dir(&self) -> &Path {
        self.containerd().dir()
    }

    /// The CNI bridge this containerd's pods attach to.
    pub fn bridge(&self) -> &str {
        &self.net.bridge
    }

    /// The pods' /24, e.g. `10.213.57.0/24`.
    pub fn subnet(&self) -> String {
        self.net.subnet()
    }

    /// The cgroup parent of every pod (cgroupfs driver): `/vessel-cri-test-<pid>-<n>`.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    pub fn log_tail(&self) -> String {
        self.containerd().log_tail()
    }

    /// containerd's whole log.
    pub fn log_text(&self) -> String {
        self.containerd().log_text()
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.client.status() {
                Ok(s) => {
                    let conds = s.status.map(|s| s.conditions).unwrap_or_default();
                    let ready = |t: &str| conds.iter().any(|c| c.r#type == t && c.status);
                    if ready("RuntimeReady") && ready("NetworkReady") {
                        return Ok(());
                    }
                    last = format!("{conds:?}");
                }
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("CRI not ready in {timeout:?}: {last}\n{}", self.log_tail())
    }

    fn import_images(&self) -> Result<()> {
        let ctrd = self.containerd();
        let images: [(&str, BusyboxImage<'_>); 2] = [
            (
                "busybox",
                BusyboxImage {
                    name: BUSYBOX_IMAGE,
                    applets: APPLETS,
                    entrypoint: &[],
                    cmd: &["/bin/sh"],
                },
            ),
            ("pause", pause_image(PAUSE_IMAGE)),
        ];
        for (dir, image) in images {
            let tar = build_oci_tar(&ctrd.dir().join("images").join(dir), &image)?;
            ctrd.import_image(CRI_NAMESPACE, &tar)?;
        }
        // The CRI plugin learns of imports from containerd's events: a moment later.
        for name in [BUSYBOX_IMAGE, PAUSE_IMAGE] {
            let seen = eventually(Duration::from_secs(30), || {
                matches!(self.client.image_status(name), Ok(Some(_)))
            });
            if !seen {
                bail!(
                    "ImageStatus does not see {name} 30 s after the import: {:?}",
                    self.client.image_status(name)
                );
            }
        }
        Ok(())
    }

    /// The sandbox config of a pod named `name`: unique uid/name/namespace, hostname
    /// `name`, logs under this containerd's dir, DNS config, the cgroup parent, net and ipc
    /// shared in the pod, pid per container (kubelet's defaults).
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let uid = format!("{name}-{}-{}", std::process::id(), unique());
        let log_directory = self.dir().join("pods").join(&uid);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: format!("vessel-test-{}", std::process::id()),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_directory.display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec![self.net.gateway()],
                searches: vec!["vessel.test".into()],
                options: vec!["ndots:1".into()],
            }),
            labels: HashMap::from([("io.vessel.test".to_string(), name.to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(cri::NamespaceMode::Container)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox of [`CriContainerd::pod_config`] with runtime handler `handler`.
    pub fn run_pod(&self, name: &str, handler: &str) -> Result<Pod> {
        self.run_pod_with(self.pod_config(name), handler)
    }

    pub fn run_pod_with(&self, config: PodSandboxConfig, handler: &str) -> Result<Pod> {
        std::fs::create_dir_all(&config.log_directory)?;
        let id = self
            .client
            .run_pod_sandbox(&config, handler)
            .map_err(|e| anyhow!("{e:#}\n--- containerd log tail ---\n{}", self.log_tail()))?;
        Ok(Pod {
            id,
            log_dir: PathBuf::from(&config.log_directory),
            config,
            handler: handler.to_string(),
        })
    }

    /// CreateContainer (busybox, `argv` as the command, log `<name>.log`) + StartContainer.
    pub fn create_and_start(&self, pod: &Pod, name: &str, argv: &[&str]) -> Result<String> {
        let id =
            self.client
                .create_container(&pod.id, &container_config(name, argv), &pod.config)?;
        self.client.start_container(&id)?;
        Ok(id)
    }

    /// Checks that `ip` routes through this containerd's bridge (traffic never leaves here).
    pub fn check_route(&self, ip: &str) -> Result<()> {
        self.net.check_route(ip)
    }

    /// Stops and removes every pod (and its containers); returns what failed.
    pub fn remove_all_pods(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let pods = match self.client.list_pod_sandbox() {
            Ok(p) => p,
            Err(e) => return vec![format!("ListPodSandbox: {e:#}")],
        };
        for pod in pods {
            for c in self
                .client
                .list_containers(Some(&pod.id))
                .unwrap_or_default()
            {
                let _ = self.client.stop_container(&c.id, 0);
                if let Err(e) = self.client.remove_container(&c.id) {
                    errors.push(format!("RemoveContainer {}: {e:#}", c.id));
                }
            }
            if let Err(e) = self.client.stop_pod_sandbox(&pod.id) {
                errors.push(format!("StopPodSandbox {}: {e:#}", pod.id));
            }
            if let Err(e) = self.client.remove_pod_sandbox(&pod.id) {
                errors.push(format!("RemovePodSandbox {}: {e:#}", pod.id));
            }
        }
        errors
    }

    /// Child cgroups left under the pods' cgroup parent, in every hierarchy.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        cgroup_children(&self.cgroup_parent)
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        self.client.set_timeout(Duration::from_secs(300));
        if self.ctrd.is_some() {
            for e in self.remove_all_pods() {
                eprintln!("cri cleanup: {e}");
            }
            self.containerd().remove_all_in(CRI_NAMESPACE);
        }
        // Stops containerd, unmounts what is left under its dir (deepest first), removes it
        // unless a mount stays.
        drop(self.ctrd.take());
        self.net.remove_bridge();
        // rmdir only (a cgroup with processes cannot go), deepest first, in every hierarchy.
        for root in cgroup_roots() {
            let top = root.join(self.cgroup_parent.trim_start_matches('/'));
            let mut dirs = cgroup_children(&self.cgroup_parent)
                .into_iter()
                .filter(|d| d.starts_with(&top))
                .collect::<Vec<_>>();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
            for d in dirs.iter().chain(std::iter::once(&top)) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// A pod started through [`CriContainerd::run_pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
    pub handler: String,
}

impl Pod {
    /// The CRI log file of container `name` (made by [`container_config`]).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }
}

pub use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStats, ContainerStatus, ExecSyncResponse,
    PodSandboxConfig, PodSandboxState,
};

fn namespaces(pid: cri::NamespaceMode) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        pid: pid as i32,
        ..Default::default()
    }
}

/// A busybox container `name` running `argv`, logging to `<name>.log` in the pod's log dir.
pub fn container_config(name: &str, argv: &[&str]) -> ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX_IMAGE.to_string(),
            ..Default::default()
        }),
        command: argv.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `cfg` with CPU shares, as kubelet sets them (2 for a BestEffort container, the request
/// in millicores × 1024 / 1000 otherwise).
pub fn with_cpu_shares(mut cfg: ContainerConfig, shares: i64) -> ContainerConfig {
    if let Some(linux) = cfg.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            cpu_shares: shares,
            ..Default::default()
        });
    }
    cfg
}

fn unique() -> u32 {
    INSTANCE.fetch_add(1, Ordering::Relaxed)
}

/// The CRI plugin's config tables (containerd config version 2).
fn cri_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{RUNC_HANDLER}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNC_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNC_HANDLER}.options]
        SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{VESSEL_HANDLER}]
      runtime_type = "io.containerd.vessel.v2"
      pod_annotations = ["io.vessel.config.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/conf"
    max_conf_num = 1
"#
    )
}

/// What containerd's CRI says about a sandbox in PodSandboxStatus's verbose `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// The sandbox task's pid (runc: the pause process; vessel: the VMM).
    pub pid: u32,
    pub runtime_handler: String,
    pub runtime_type: String,
    /// `linux.cgroupsPath` of the sandbox's OCI spec.
    pub cgroups_path: Option<String>,
}

/// Parses the `info` map of a verbose PodSandboxStatus (containerd 1.6: one key `info`
/// holding JSON).
pub fn parse_sandbox_info(info: &HashMap<String, String>) -> Result<SandboxInfo, String> {
    let text = info
        .get("info")
        .ok_or_else(|| format!("no \"info\" key in {:?}", info.keys().collect::<Vec<_>>()))?;
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("sandbox info is not JSON: {e}"))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(SandboxInfo {
        pid: v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| format!("no pid in sandbox info: {}", logs::clip(text)))?,
        runtime_handler: s("runtimeHandler"),
        runtime_type: s("runtimeType"),
        cgroups_path: v["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .map(str::to_string),
    })
}

/// The cgroup (v1) path of `controller` in a `/proc/<pid>/cgroup` text.
pub fn cgroup_path_of(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers, `systemd`,
/// `unified`), each once (`cpu` and `cpuacct` are links to `cpu,cpuacct`).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if let Ok(real) = std::fs::canonicalize(&p) {
            if real.is_dir() && seen.insert(real.clone()) {
                out.push(real);
            }
        }
    }
    out.sort();
    out
}

/// Cgroup directories below `parent` (at any depth) in every hierarchy.
pub fn cgroup_children(parent: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(e.path());
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for root in cgroup_roots() {
        walk(&root.join(parent.trim_start_matches('/')), &mut out);
    }
    out
}

/// Processes (not this one, not `ctr`) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && !text.starts_with("ctr ") {
            found.push(format!("{name}: {}", text.trim_end()));
        }
    }
    found
}

/// `GET <path>` over HTTP/1.0 to `ip:port` from the host (this process), bounded by
/// `timeout`; the response (headers and body).
pub fn http_get(ip: &str, port: u16, path: &str, timeout: Duration) -> Result<String> {
    http_fetch(ip, port, path, timeout, 1 << 20).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `GET <path>` over HTTP/1.0 to `ip:port`; the whole response (at most `limit` bytes), each
/// read and write bounded by `timeout`.
pub fn http_fetch(
    ip: &str,
    port: u16,
    path: &str,
    timeout: Duration,
    limit: u64,
) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}")
        .parse()
        .with_context(|| format!("address {ip}:{port}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    s.take(limit)
        .read_to_end(&mut out)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(out)
}

/// A process's command line (`/proc/<pid>/cmdline`, NULs as spaces).
pub fn cmdline_of(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim_end()
        .to_string()
}

/// Waits until `f` holds, up to `timeout`; whether it did.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Runs a command, its stdout (error with stderr if it fails).
pub(crate) fn run_text(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_info_of_containerd_1_6() {
        let json = r#"{"pid":4242,"processStatus":"running","netNamespaceClosed":false,
            "runtimeHandler":"vessel","runtimeType":"io.containerd.vessel.v2",
            "runtimeSpec":{"linux":{"cgroupsPath":"/vessel-cri-test-1-0/abc"}}}"#;
        let info = HashMap::from([("info".to_string(), json.to_string())]);
        let s = parse_sandbox_info(&info).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.runtime_handler, "vessel");
        assert_eq!(s.runtime_type, "io.containerd.vessel.v2");
        assert_eq!(s.cgroups_path.as_deref(), Some("/vessel-cri-test-1-0/abc"));
        assert!(parse_sandbox_info(&HashMap::new()).is_err());
        let no_pid = HashMap::from([("info".to_string(), "{}".to_string())]);
        assert!(parse_sandbox_info(&no_pid).unwrap_err().contains("no pid"));
        let bad = HashMap::from([("info".to_string(), "{".to_string())]);
        assert!(parse_sandbox_info(&bad).is_err());
    }

    #[test]
    fn cgroup_lines() {
        let text = "12:pids:/a/b\n9:memory:/vessel-cri-test-1-0/abc\n4:cpu,cpuacct:/x\n\
                    1:name=systemd:/user.slice\n0::/init.scope\n";
        assert_eq!(
            cgroup_path_of(text, "memory").as_deref(),
            Some("/vessel-cri-test-1-0/abc")
        );
        assert_eq!(cgroup_path_of(text, "cpuacct").as_deref(), Some("/x"));
        assert_eq!(
            cgroup_path_of(text, "name=systemd").as_deref(),
            Some("/user.slice")
        );
        assert_eq!(cgroup_path_of(text, "blkio"), None);
    }

    #[test]
    fn cri_config_names_both_handlers_and_the_cni_dir() {
        let text = cri_config(Path::new("/tmp/vctrdX"));
        let v: toml::Table = text.parse().unwrap();
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(cri["netns_mounts_under_state_dir"].as_bool(), Some(true));
        assert_eq!(cri["sandbox_image"].as_str(), Some(PAUSE_IMAGE));
        let rts = &cri["containerd"]["runtimes"];
        assert_eq!(
            rts["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(
            rts["vessel"]["runtime_type"].as_str(),
            Some("io.containerd.vessel.v2")
        );
        assert_eq!(
            cri["cni"]["conf_dir"].as_str(),
            Some("/tmp/vctrdX/cni/conf")
        );
    }

    #[test]
    fn container_config_is_kubelet_like() {
        let c = container_config("web", &["sh", "-c", "true"]);
        assert_eq!(c.log_path, "web.log");
        assert_eq!(c.command, ["sh", "-c", "true"]);
        let ns = c
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network(), cri::NamespaceMode::Pod);
        assert_eq!(ns.ipc(), cri::NamespaceMode::Pod);
        assert_eq!(ns.pid(), cri::NamespaceMode::Container);
    }
}
