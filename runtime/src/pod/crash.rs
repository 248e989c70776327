//! Releasing what a pod left on the host after the process that held it died (containerd runs
//! `containerd-shim-vessel-v2 delete` for each of its containers; `vessel cleanup` too).
//! Works from the bundle's annotations and the pod's `state.json` alone.

use std::path::Path;
use vessel_protocol::errors::chain;

use super::PodError;
use crate::cleanup::{cleanup_sandbox_dir, CleanupReport};
use crate::config::Config;
use crate::grouping::{role_from_bundle, ContainerRole};
use crate::mounts::Mounter;
use crate::rootfs::unmount_rootfs;
use crate::share::release_share;
use crate::state::{SandboxPaths, SandboxStateFile};

/// What [`cleanup_after_crash`] released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrashCleanup {
    /// The pod's own dir was cleaned (the container started the pod).
    pub pod: Option<CleanupReport>,
    /// A member's shares were released.
    pub member_shares: bool,
}

/// Releases what container `id` (bundle `bundle`, containerd namespace `namespace`) held:
/// the whole pod when it started the pod (kills its VMM if still that process, unmounts,
/// removes the cgroup and the state dir), else its shares in the pod; then its rootfs mount.
/// Every step is tried; the first failure is returned.
pub fn cleanup_after_crash(
    config: &Config,
    namespace: &str,
    id: &str,
    bundle: &Path,
    mounter: &dyn Mounter,
) -> Result<CrashCleanup, PodError> {
    let mut done = CrashCleanup::default();
    let mut first_err: Option<PodError> = None;
    let role =
        role_from_bundle(bundle, id).map_err(|e| PodError::InvalidArgument(e.to_string()))?;
    let root = &config.runtime.state_root;
    let paths = SandboxPaths::new(root, namespace, role.sandbox_id(id))
        .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
    match &role {
        ContainerRole::SandboxOwner { .. } => {
            match cleanup_sandbox_dir(&paths, mounter, config.shutdown_timeout()) {
                Ok(r) => {
                    paths.remove_empty_namespace_dir();
                    done.pod = Some(r)
                }
                Err(e) => {
                    first_err.get_or_insert(PodError::sandbox(
                        format!("cleaning up pod {id}"),
                        e.into(),
                    ));
                }
            }
        }
        ContainerRole::Member { .. } => {
            match release_share(&paths.shared(), id, &member_records(&paths, id), mounter) {
                Ok(()) => done.member_shares = true,
                Err(e) => {
                    first_err.get_or_insert(PodError::sandbox(
                        format!("cleaning up container {id}"),
                        e.into(),
                    ));
                }
            }
        }
    }
    if let Err(source) = unmount_rootfs(bundle, mounter) {
        first_err.get_or_insert(PodError::Mount {
            context: format!("cleaning up container {id}: rootfs"),
            source,
        });
    }
    first_err.map_or(Ok(done), Err)
}

/// The binds the pod's state file records for container `id` (none if it cannot be read:
/// the member's dir is then released only if nothing is mounted in it).
fn member_records(paths: &SandboxPaths, id: &str) -> Vec<crate::safe_mount::MountRecord> {
    match SandboxStateFile::read(&paths.state_file()) {
        Ok(Some(s)) => s
            .mounts
            .into_iter()
            .filter(|m| m.container == id)
            .map(|m| m.record)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            log::warn!("container {id}: {e}", e = chain(&e));
            Vec::new()
        }
    }
}
