//! The warm-up before a snapshot (`vessel_protocol::WARMUP_CMDLINE_PARAM`): one container
//! created in full — setup child spawned and re-exec'd, namespaces, the default spec's mounts,
//! devices, `pivot_root`, masked paths, its cgroup — and removed before it ever starts.
//!
//! Why: a pod restored from a snapshot runs its first container on a kernel and an agent that
//! had never made one (cold slab and per-CPU caches, code never paged in). On KVM-PVM, where
//! the guest kernel is emulated, that first container cost ~1.3 s more than the next one
//! (`vm_run`); every restored pod paid it. Done before the snapshot, it is paid once.
//!
//! After it, PID 1 makes spare cgroups (`container::cgroup_placement`) and starts spare setup
//! children (`container::process`), so the snapshot also holds the `mkdir` of a restored
//! pod's first containers' cgroups and the spawn and re-exec of their setup children.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::sandbox::{PodPlacement, Sandbox};

const ID: &str = "vessel-warmup";
/// On PID 1's /run tmpfs; removed afterwards.
const DIR: &str = "/run/vessel-warmup";

/// Setup children started after the warm-up, ahead of need (`container::process`): a pod's
/// sandbox container and its first app container, or a standalone container, each claim one.
pub const SPARE_SETUP_CHILDREN: usize = 2;

/// Empty cgroups made after the warm-up (`container::cgroup_placement`): a CRI pod's
/// built-in pause and its first two app containers, or a standalone container, each take one
/// instead of paying the `mkdir` (0.25-0.35 s each on KVM-PVM). Cheaper to keep than a
/// setup child (no process), so one more.
pub const SPARE_CGROUPS: usize = 3;

/// Whether the kernel command line asks for the warm-up.
pub fn wanted() -> bool {
    crate::init::cmdline_value(vessel_protocol::WARMUP_CMDLINE_PARAM).as_deref() == Some("1")
}

/// Creates and removes the throw-away container; how long it took.
pub fn run(sandbox: &Sandbox) -> Result<Duration, String> {
    let started = Instant::now();
    let rootfs = Path::new(DIR).join("rootfs");
    let result = prepare(&rootfs).and_then(|spec| {
        sandbox
            .create_container(ID, &spec, &[], false, &PodPlacement::default())
            .map_err(|e| format!("create: {e}"))?;
        sandbox
            .remove_container(ID, Duration::from_secs(30))
            .map_err(|e| format!("remove: {e}"))
    });
    let _ = fs::remove_dir_all(DIR);
    result.map(|()| started.elapsed())
}

/// A rootfs with the mount points of the default spec and an (empty, never started)
/// executable; the spec: oci-spec's default (runc's), as a pod's container gets it from the
/// runtime (no network namespace of its own: `vessel_runtime::pod::namespaces`).
fn prepare(rootfs: &Path) -> Result<Vec<u8>, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(d)).map_err(|e| io("warm-up rootfs", e))?;
    }
    let exe = rootfs.join("warmup");
    fs::write(&exe, b"").map_err(|e| io("warm-up executable", e))?;
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755))
        .map_err(|e| io("warm-up executable", e))?;
    let mut spec = Spec::default();
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(vec!["/warmup".to_string()]));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    if let Some(linux) = spec.linux_mut() {
        let namespaces = linux
            .namespaces()
            .iter()
            .flatten()
            .filter(|n| n.typ() != LinuxNamespaceType::Network)
            .cloned()
            .collect();
        linux.set_namespaces(Some(namespaces));
    }
    serde_json::to_vec(&spec).map_err(|e| format!("warm-up spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_has_the_default_mounts_and_no_network_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let json = prepare(&rootfs).unwrap();
        let spec: Spec = serde_json::from_slice(&json).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), &rootfs);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_deref(),
            Some(&["/warmup".to_string()][..])
        );
        let mode = fs::metadata(rootfs.join("warmup"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable");
        let kinds: Vec<LinuxNamespaceType> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ())
            .collect();
        assert!(kinds.contains(&LinuxNamespaceType::Mount), "{kinds:?}");
        assert!(!kinds.contains(&LinuxNamespaceType::Network), "{kinds:?}");
        let mounts: Vec<String> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().display().to_string())
            .collect();
        for m in ["/proc", "/dev", "/dev/pts", "/sys"] {
            assert!(mounts.iter().any(|d| d == m), "{m} in {mounts:?}");
        }
    }
}
