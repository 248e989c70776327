//! Makes a container's rootfs and volumes visible to the guest through the sandbox's shared
//! directory (exported by the VMM over virtio-fs), and rewrites the OCI spec to the guest paths.
//!
//! Host: `<state>/<sid>/shared/<cid>/rootfs` ← bind of `<bundle>/rootfs`,
//!       `<state>/<sid>/shared/<cid>/volumes/<n>` ← bind of the n-th host bind mount's source.
//! Guest: the same tree appears under the guest shared root (`/run/vessel/shared`).
//! Mounts the guest kernel provides itself (proc, tmpfs, sysfs, ...) are kept as they are.
//! In a CRI pod, the bind of the sandbox's shm directory on `/dev/shm` becomes a bind of the
//! pod's shm tmpfs in the guest (one per pod, made at CreateSandbox): shared memory between a
//! pod's containers stays in the guest instead of going through virtio-fs.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::mounts::{prepare_mount_point, MountError, Mounter};

/// Where the agent mounts the shared directory inside the guest.
pub const GUEST_SHARED_ROOT: &str = "/run/vessel/shared";
/// Pod-level things in the guest that the host does not share (the pod's /dev/shm tmpfs).
pub const GUEST_POD_DIR: &str = "/run/vessel/pod";
/// The destination CRI binds the sandbox's shm directory on.
const DEV_SHM: &str = "/dev/shm";
/// The virtio-fs tag of the shared directory.
pub const SHARED_FS_TAG: &str = "vessel";

/// Filesystem types that the guest kernel mounts itself: their source is not a host path.
const GUEST_FS_TYPES: [&str; 10] = [
    "proc", "tmpfs", "devpts", "sysfs", "cgroup", "cgroup2", "mqueue", "shm", "devtmpfs", "bpf",
];

/// The spec cannot be shared with the guest as written.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("container {container}: spec has no root")]
    NoRoot { container: String },
    #[error("container {container}: mount on {destination}: {reason}")]
    UnsupportedMount {
        container: String,
        destination: PathBuf,
        reason: String,
    },
    #[error("container {container}: volume source {source_path} for {destination}: {source}")]
    MissingSource {
        container: String,
        source_path: PathBuf,
        destination: PathBuf,
        source: std::io::Error,
    },
    #[error("container {container}: {source}")]
    Mount {
        container: String,
        source: MountError,
    },
}

/// One host bind mount into the shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    pub source: PathBuf,
    pub target: PathBuf,
    pub readonly: bool,
}

/// What sharing a container needs: the host binds (in order) and the rewritten spec.
#[derive(Debug, Clone)]
pub struct SharePlan {
    pub binds: Vec<BindPlan>,
    pub spec: Spec,
}

fn is_bind(typ: Option<&str>, options: &[String]) -> bool {
    typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Computes the binds and the guest spec for container `cid`.
///
/// * `host_rootfs`: the container's rootfs on the host (normally `<bundle>/rootfs`, mounted).
/// * `host_shared`: the sandbox's shared dir on the host; `guest_shared`: the same in the guest.
/// * `guest_pod_shm`: in a CRI pod, the pod's shm directory in the guest.
pub fn plan_container_share(
    spec: &Spec,
    cid: &str,
    host_rootfs: &Path,
    host_shared: &Path,
    guest_shared: &Path,
    guest_pod_shm: Option<&Path>,
) -> Result<SharePlan, ShareError> {
    let mut spec = spec.clone();
    let host_dir = host_shared.join(cid);
    let guest_dir = guest_shared.join(cid);
    let mut binds = Vec::new();

    let root = spec.root_mut().as_mut().ok_or_else(|| ShareError::NoRoot {
        container: cid.to_string(),
    })?;
    binds.push(BindPlan {
        source: host_rootfs.to_path_buf(),
        target: host_dir.join("rootfs"),
        // The agent applies root.readonly inside the guest; the share stays writable so the
        // guest can still mount over it.
        readonly: false,
    });
    root.set_path(guest_dir.join("rootfs"));

    if let Some(mounts) = spec.mounts_mut().as_mut() {
        let mut n = 0usize;
        for m in mounts.iter_mut() {
            let options = m.options().clone().unwrap_or_default();
            let typ = m.typ().clone();
            if is_bind(typ.as_deref(), &options) {
                let source = m.source().clone().unwrap_or_default();
                if let Some(shm) = guest_pod_shm {
                    if m.destination() == Path::new(DEV_SHM)
                        && source.file_name() == Some(std::ffi::OsStr::new("shm"))
                    {
                        m.set_source(Some(shm.to_path_buf()));
                        continue;
                    }
                }
                if !source.is_absolute() {
                    return Err(ShareError::UnsupportedMount {
                        container: cid.to_string(),
                        destination: m.destination().clone(),
                        reason: format!("bind source {} is not absolute", source.display()),
                    });
                }
                let rel = PathBuf::from("volumes").join(n.to_string());
                n += 1;
                binds.push(BindPlan {
                    source,
                    target: host_dir.join(&rel),
                    readonly: options.iter().any(|o| o == "ro"),
                });
                m.set_source(Some(guest_dir.join(&rel)));
                continue;
            }
            match typ.as_deref() {
                Some(t) if GUEST_FS_TYPES.contains(&t) => {}
                other => {
                    return Err(ShareError::UnsupportedMount {
                        container: cid.to_string(),
                        destination: m.destination().clone(),
                        reason: format!(
                            "type {:?} is neither a bind of a host path nor a guest filesystem",
                            other.unwrap_or("")
                        ),
                    })
                }
            }
        }
    }

    // Hooks are host binaries: they mean nothing in the guest. (Namespace paths were
    // translated before: `crate::pod::namespaces`.)
    spec.set_hooks(None);

    Ok(SharePlan { binds, spec })
}

/// Performs the binds of `plan`; `record` is called with each target before it is mounted
/// (so a crash leaves a record of it). On failure, unmounts what it mounted.
pub fn apply_share(
    plan: &SharePlan,
    cid: &str,
    mounter: &dyn Mounter,
    record: &mut dyn FnMut(&Path),
) -> Result<Vec<PathBuf>, ShareError> {
    let mut done: Vec<PathBuf> = Vec::new();
    for bind in &plan.binds {
        let step = (|| {
            std::fs::metadata(&bind.source).map_err(|source| ShareError::MissingSource {
                container: cid.to_string(),
                source_path: bind.source.clone(),
                destination: bind.target.clone(),
                source,
            })?;
            prepare_mount_point(&bind.source, &bind.target).map_err(|source| {
                ShareError::Mount {
                    container: cid.to_string(),
                    source,
                }
            })?;
            record(&bind.target);
            mounter
                .bind(&bind.source, &bind.target, bind.readonly)
                .map_err(|source| ShareError::Mount {
                    container: cid.to_string(),
                    source,
                })
        })();
        if let Err(e) = step {
            for target in done.iter().rev() {
                if let Err(u) = mounter.unmount(target) {
                    log::warn!("container {cid}: rollback: {u}");
                }
            }
            return Err(e);
        }
        done.push(bind.target.clone());
    }
    Ok(done)
}

/// Unmounts everything under `<host_shared>/<cid>` and removes that directory. Refuses to
/// remove anything while a mount is still present (that would delete the container's files).
pub fn release_share(
    host_shared: &Path,
    cid: &str,
    mounter: &dyn Mounter,
) -> Result<(), ShareError> {
    let dir = host_shared.join(cid);
    let err = |source| ShareError::Mount {
        container: cid.to_string(),
        source,
    };
    for target in mounter.mounts_under(&dir).map_err(err)? {
        mounter.unmount(&target).map_err(err)?;
    }
    let left = mounter.mounts_under(&dir).map_err(err)?;
    if let Some(first) = left.first() {
        return Err(err(MountError::Unmount {
            target: first.clone(),
            errno: nix::errno::Errno::EBUSY,
        }));
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(err(MountError::MountPoint { path: dir, source })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn spec_json(mounts: &str) -> Spec {
        let text = format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs","readonly":true}},
               "process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
               "hooks":{{"prestart":[{{"path":"/usr/bin/hook"}}]}},
               "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"network","path":"/var/run/netns/cni-1"}}]}},
               "mounts":[{mounts}]}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn rewrites_root_and_binds_keeps_guest_mounts() {
        let spec = spec_json(
            r#"{"destination":"/proc","type":"proc","source":"proc"},
               {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid"]},
               {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","rw"]},
               {"destination":"/etc/hosts","source":"/var/lib/x/hosts","options":["bind","ro"]}"#,
        );
        let plan = plan_container_share(
            &spec,
            "c1",
            Path::new("/b/c1/rootfs"),
            Path::new("/run/vessel/sb/shared"),
            Path::new(GUEST_SHARED_ROOT),
            None,
        )
        .unwrap();
        assert_eq!(
            plan.binds,
            vec![
                BindPlan {
                    source: "/b/c1/rootfs".into(),
                    target: "/run/vessel/sb/shared/c1/rootfs".into(),
                    readonly: false
                },
                BindPlan {
                    source: "/srv/data".into(),
                    target: "/run/vessel/sb/shared/c1/volumes/0".into(),
                    readonly: false
                },
                BindPlan {
                    source: "/var/lib/x/hosts".into(),
                    target: "/run/vessel/sb/shared/c1/volumes/1".into(),
                    readonly: true
                },
            ]
        );
        let s = &plan.spec;
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/vessel/shared/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let mounts = s.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new("proc")));
        assert_eq!(mounts[1].source().as_deref(), Some(Path::new("tmpfs")));
        assert_eq!(
            mounts[2].source().as_deref(),
            Some(Path::new("/run/vessel/shared/c1/volumes/0"))
        );
        assert_eq!(
            mounts[3].source().as_deref(),
            Some(Path::new("/run/vessel/shared/c1/volumes/1"))
        );
        assert_eq!(mounts[3].options().as_ref().unwrap(), &vec!["bind", "ro"]);
        assert!(s.hooks().is_none());
    }

    #[test]
    fn cri_shm_becomes_the_pods_guest_tmpfs() {
        let spec = spec_json(
            r#"{"destination":"/dev/shm","type":"bind","source":"/var/lib/c/sandboxes/s1/shm","options":["rbind","rw"]},
               {"destination":"/etc/hosts","type":"bind","source":"/var/lib/c/sandboxes/s1/hosts","options":["rbind","ro"]}"#,
        );
        let shm = Path::new("/run/vessel/pod/shm");
        let plan = plan_container_share(
            &spec,
            "c1",
            Path::new("/b/c1/rootfs"),
            Path::new("/h"),
            Path::new("/g"),
            Some(shm),
        )
        .unwrap();
        // Only the rootfs and /etc/hosts come from the host.
        assert_eq!(plan.binds.len(), 2, "{:?}", plan.binds);
        assert_eq!(
            plan.binds[1].source,
            Path::new("/var/lib/c/sandboxes/s1/hosts")
        );
        let mounts = plan.spec.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(shm));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/g/c1/volumes/0"))
        );
        // Outside a CRI pod, the same mount is an ordinary volume.
        let plan = plan_container_share(
            &spec,
            "c1",
            Path::new("/r"),
            Path::new("/h"),
            Path::new("/g"),
            None,
        )
        .unwrap();
        assert_eq!(plan.binds.len(), 3);
    }

    #[test]
    fn rejects_unshareable_mounts() {
        for m in [
            r#"{"destination":"/x","type":"bind","source":"relative/path","options":["rbind"]}"#,
            r#"{"destination":"/x","type":"nfs","source":"server:/export"}"#,
        ] {
            let spec = spec_json(m);
            let err = plan_container_share(
                &spec,
                "c1",
                Path::new("/r"),
                Path::new("/h"),
                Path::new("/g"),
                None,
            )
            .unwrap_err();
            assert!(matches!(err, ShareError::UnsupportedMount { .. }), "{err}");
            assert!(err.to_string().contains("/x"), "{err}");
        }
    }

    /// Records calls; a unit-test stand-in for [`crate::mounts::HostMounter`], whose real
    /// behaviour is covered by the root-only test below and by the containerd tests.
    #[derive(Default)]
    struct RecordingMounter {
        mounted: Mutex<Vec<PathBuf>>,
        fail_on: Option<PathBuf>,
    }

    impl Mounter for RecordingMounter {
        fn bind(&self, _s: &Path, t: &Path, _ro: bool) -> Result<(), MountError> {
            if self.fail_on.as_deref() == Some(t) {
                return Err(MountError::Bind {
                    source_path: _s.into(),
                    target: t.into(),
                    errno: nix::errno::Errno::EPERM,
                });
            }
            self.mounted.lock().unwrap().push(t.to_path_buf());
            Ok(())
        }
        fn mount(&self, _m: &crate::rootfs::RootfsMount, t: &Path) -> Result<(), MountError> {
            self.mounted.lock().unwrap().push(t.to_path_buf());
            Ok(())
        }
        fn unmount(&self, t: &Path) -> Result<(), MountError> {
            self.mounted.lock().unwrap().retain(|m| m != t);
            Ok(())
        }
        fn mounts_under(&self, d: &Path) -> Result<Vec<PathBuf>, MountError> {
            let mut v: Vec<_> = self
                .mounted
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.starts_with(d))
                .cloned()
                .collect();
            v.reverse();
            Ok(v)
        }
    }

    fn fixture(fail_second: bool) -> (tempfile::TempDir, SharePlan, RecordingMounter) {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&vol).unwrap();
        let spec = spec_json(&format!(
            r#"{{"destination":"/v","type":"bind","source":"{}","options":["rbind"]}}"#,
            vol.display()
        ));
        let shared = dir.path().join("shared");
        let plan =
            plan_container_share(&spec, "c1", &rootfs, &shared, Path::new("/g"), None).unwrap();
        let mounter = RecordingMounter {
            fail_on: fail_second.then(|| shared.join("c1/volumes/0")),
            ..Default::default()
        };
        (dir, plan, mounter)
    }

    #[test]
    fn apply_records_before_mounting_and_release_cleans_up() {
        let (dir, plan, mounter) = fixture(false);
        let mut recorded = Vec::new();
        let done = apply_share(&plan, "c1", &mounter, &mut |p| {
            recorded.push(p.to_path_buf())
        })
        .unwrap();
        assert_eq!(done, recorded);
        assert_eq!(done.len(), 2);
        assert!(done[0].is_dir() && done[1].is_dir());
        let shared = dir.path().join("shared");
        release_share(&shared, "c1", &mounter).unwrap();
        assert!(mounter.mounted.lock().unwrap().is_empty());
        assert!(!shared.join("c1").exists());
    }

    #[test]
    fn apply_rolls_back_on_failure() {
        let (_dir, plan, mounter) = fixture(true);
        let err = apply_share(&plan, "c1", &mounter, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ShareError::Mount { .. }), "{err}");
        assert!(
            mounter.mounted.lock().unwrap().is_empty(),
            "rootfs bind not rolled back"
        );
    }

    #[test]
    fn missing_volume_source_is_reported() {
        let (_dir, mut plan, mounter) = fixture(false);
        plan.binds[1].source = "/nonexistent/vessel-test".into();
        let err = apply_share(&plan, "c1", &mounter, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ShareError::MissingSource { .. }), "{err}");
        assert!(mounter.mounted.lock().unwrap().is_empty());
    }

    /// The real mounter on real mounts (root only: fails loudly without it).
    #[test]
    fn host_mounter_bind_and_release() {
        use crate::mounts::HostMounter;
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CAP_SYS_ADMIN) to bind-mount"
        );
        let (dir, plan, _) = fixture(false);
        std::fs::write(plan.binds[0].source.join("marker"), b"hi").unwrap();
        let done = apply_share(&plan, "c1", &HostMounter, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(done[0].join("marker")).unwrap(), b"hi");
        let shared = dir.path().join("shared");
        assert_eq!(HostMounter.mounts_under(&shared).unwrap().len(), 2);
        release_share(&shared, "c1", &HostMounter).unwrap();
        assert!(HostMounter.mounts_under(&shared).unwrap().is_empty());
        assert!(!shared.join("c1").exists());
        // The source survived the release.
        assert_eq!(
            std::fs::read(plan.binds[0].source.join("marker")).unwrap(),
            b"hi"
        );
    }
}
