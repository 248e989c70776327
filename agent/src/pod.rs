//! The pod's namespaces: the sandbox (pause) container's ipc, uts, net and pid namespaces,
//! pinned by bind mounts of their nsfs files under `<state>/pod/ns/<kind>` so that later
//! containers of the pod join them by path (the setup child's existing join-by-path step),
//! and so that they outlive the pause process itself.
//!
//! The runtime turns the host paths containerd writes into a member's spec
//! (`/proc/<task pid>/ns/<kind>`) into `pod_namespaces` of CreateContainer; this module maps
//! those kinds back to the pinned files.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::Pid;
use vessel_protocol::agent::PodNamespace;

use crate::container::namespaces::NsKind;
use crate::error::{RequestError, RequestResult};

/// The kinds a pod shares, in the order they are pinned.
pub const POD_KINDS: [NsKind; 4] = [NsKind::Ipc, NsKind::Uts, NsKind::Net, NsKind::Pid];

/// The API's namespace kind as the agent's.
pub fn kind_of(ns: PodNamespace) -> RequestResult<NsKind> {
    match ns {
        PodNamespace::POD_NAMESPACE_IPC => Ok(NsKind::Ipc),
        PodNamespace::POD_NAMESPACE_UTS => Ok(NsKind::Uts),
        PodNamespace::POD_NAMESPACE_NET => Ok(NsKind::Net),
        PodNamespace::POD_NAMESPACE_PID => Ok(NsKind::Pid),
        PodNamespace::POD_NAMESPACE_UNSPECIFIED => Err(RequestError::invalid(
            "pod_namespaces holds an unspecified namespace kind",
        )),
    }
}

/// The pinned namespaces of the pod's sandbox container.
#[derive(Debug)]
pub struct PodNamespaces {
    /// The sandbox container they came from.
    pub owner: String,
    pinned: Vec<(NsKind, PathBuf)>,
}

impl PodNamespaces {
    /// Pins the namespaces of process `pid` (the sandbox container's init, set up and blocked
    /// before exec) under `dir`. On failure nothing stays mounted.
    pub fn pin(owner: &str, pid: Pid, dir: &Path) -> RequestResult<PodNamespaces> {
        fs::create_dir_all(dir).map_err(|e| {
            RequestError::internal(format!("creating pod namespace dir {}: {e}", dir.display()))
        })?;
        let mut pod = PodNamespaces {
            owner: owner.to_string(),
            pinned: Vec::new(),
        };
        for kind in POD_KINDS {
            let target = dir.join(kind.proc_name());
            let source = PathBuf::from(format!("/proc/{pid}/ns/{}", kind.proc_name()));
            let pinned = fs::File::create(&target)
                .map_err(|e| format!("creating {}: {e}", target.display()))
                .and_then(|_| {
                    mount(
                        Some(&source),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| format!("bind {} on {}: {e}", source.display(), target.display()))
                });
            if let Err(e) = pinned {
                pod.release();
                return Err(RequestError::internal(format!(
                    "pinning the pod's {} namespace: {e}",
                    kind.proc_name()
                )));
            }
            pod.pinned.push((kind, target));
        }
        Ok(pod)
    }

    /// The pinned file of each requested kind, for the setup child to join.
    pub fn paths_for(&self, kinds: &[NsKind]) -> Vec<(NsKind, PathBuf)> {
        kinds
            .iter()
            .filter_map(|k| {
                self.pinned
                    .iter()
                    .find(|(pk, _)| pk == k)
                    .map(|(k, p)| (*k, p.clone()))
            })
            .collect()
    }

    /// Unmounts and removes the pinned files; containers already in the namespaces keep them.
    pub fn release(&mut self) {
        for (_, path) in self.pinned.drain(..).rev() {
            if let Err(e) = umount2(&path, MntFlags::MNT_DETACH) {
                log::warn!("unpinning {}: {e}", path.display());
            }
            let _ = fs::remove_file(&path);
        }
    }
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_kinds_map_and_unspecified_is_refused() {
        assert_eq!(
            kind_of(PodNamespace::POD_NAMESPACE_NET).unwrap(),
            NsKind::Net
        );
        assert_eq!(
            kind_of(PodNamespace::POD_NAMESPACE_PID).unwrap(),
            NsKind::Pid
        );
        let e = kind_of(PodNamespace::POD_NAMESPACE_UNSPECIFIED).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn paths_for_picks_requested_kinds() {
        let pod = PodNamespaces {
            owner: "pause".into(),
            pinned: vec![
                (NsKind::Ipc, "/s/ipc".into()),
                (NsKind::Net, "/s/net".into()),
            ],
        };
        assert_eq!(
            pod.paths_for(&[NsKind::Net, NsKind::Uts]),
            vec![(NsKind::Net, PathBuf::from("/s/net"))]
        );
        std::mem::forget(pod); // nothing is mounted: skip the unmounting drop
    }
}
