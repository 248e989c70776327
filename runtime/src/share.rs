//! Makes a container's rootfs and volumes visible to the guest through the sandbox's shared
//! directory (exported by the VMM over virtio-fs), and rewrites the OCI spec to the guest paths.
//!
//! Host: `<state>/<sid>/shared/<cid>/rootfs` ← bind of `<bundle>/rootfs`,
//!       `<state>/<sid>/shared/<cid>/volumes/<n>` ← bind of the n-th host bind mount's source.
//! The guest can write anything below `shared/` at any time: every bind is made beneath it
//! without following a path the guest could have replaced ([`crate::safe_mount`]), recorded
//! by mount id before it exists, and undone by that id.
//! Guest: the same tree appears under the guest shared root (`/run/vessel/shared`).
//! Mounts the guest kernel provides itself (proc, tmpfs, sysfs, ...) are kept as they are.
//! In a CRI pod, the bind of the sandbox's shm directory on `/dev/shm` becomes a bind of the
//! pod's shm tmpfs in the guest (one per pod, made at CreateSandbox): shared memory between a
//! pod's containers stays in the guest instead of going through virtio-fs.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::mounts::{MountError, Mounter};
use crate::safe_mount::MountRecord;

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
    #[error("container {container}: volume source {source_path} for {destination}")]
    MissingSource {
        container: String,
        source_path: PathBuf,
        destination: PathBuf,
        source: std::io::Error,
    },
    #[error("container {container}: sharing with the guest")]
    Mount {
        container: String,
        #[source]
        source: MountError,
    },
    #[error("container {container}: {left:?} still mounted after unmounting; not removing {dir}")]
    StillMounted {
        container: String,
        dir: PathBuf,
        left: Vec<PathBuf>,
    },
    #[error("container {container}: removing {dir}")]
    Remove {
        container: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One host bind mount into the shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    pub source: PathBuf,
    /// Below the shared directory: `<cid>/rootfs`, `<cid>/volumes/<n>`.
    pub rel: PathBuf,
    pub readonly: bool,
}

/// What sharing a container needs: the host binds (in order) and the rewritten spec.
#[derive(Debug, Clone)]
pub struct SharePlan {
    pub binds: Vec<BindPlan>,
    pub spec: Spec,
}

/// Whether an OCI mount is a bind of a host path.
pub(crate) fn is_bind(typ: Option<&str>, options: &[String]) -> bool {
    typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Computes the binds and the guest spec for container `cid`.
///
/// * `host_rootfs`: the container's rootfs on the host (normally `<bundle>/rootfs`, mounted).
/// * `guest_shared`: the sandbox's shared dir as the guest sees it.
/// * `guest_pod_shm`: in a CRI pod, the pod's shm directory in the guest.
pub fn plan_container_share(
    spec: &Spec,
    cid: &str,
    host_rootfs: &Path,
    guest_shared: &Path,
    guest_pod_shm: Option<&Path>,
) -> Result<SharePlan, ShareError> {
    let mut spec = spec.clone();
    let host_dir = PathBuf::from(cid);
    let guest_dir = guest_shared.join(cid);
    let mut binds = Vec::new();

    let root = spec.root_mut().as_mut().ok_or_else(|| ShareError::NoRoot {
        container: cid.to_string(),
    })?;
    binds.push(BindPlan {
        source: host_rootfs.to_path_buf(),
        rel: host_dir.join("rootfs"),
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
                    rel: host_dir.join(&rel),
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

/// Performs the binds of `plan` beneath `shared` (the sandbox's shared dir, trusted; what
/// is below it is not); `record` is called with each bind's record before the bind exists
/// (so a crash leaves a record of it). On failure, unmounts what it mounted.
pub fn apply_share(
    plan: &SharePlan,
    cid: &str,
    shared: &Path,
    mounter: &dyn Mounter,
    record: &mut dyn FnMut(&MountRecord),
) -> Result<Vec<MountRecord>, ShareError> {
    let mut done: Vec<MountRecord> = Vec::new();
    for bind in &plan.binds {
        let step = std::fs::metadata(&bind.source)
            .map_err(|source| ShareError::MissingSource {
                container: cid.to_string(),
                source_path: bind.source.clone(),
                destination: bind.rel.clone(),
                source,
            })
            .and_then(|_| {
                mounter
                    .bind_beneath(shared, &bind.rel, &bind.source, bind.readonly, record)
                    .map_err(|source| ShareError::Mount {
                        container: cid.to_string(),
                        source,
                    })
            });
        match step {
            Ok(rec) => done.push(rec),
            Err(e) => {
                for rec in done.iter().rev() {
                    if let Err(u) = mounter.unmount_record(shared, rec) {
                        log::warn!("container {cid}: rollback: {u}");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Unmounts the container's recorded binds (by mount id, wherever the guest moved them),
/// then removes `<shared>/<cid>` — never while anything is still mounted below it (that
/// would delete the container's files). `remove_dir_all` does not follow symlinks.
pub fn release_share(
    shared: &Path,
    cid: &str,
    records: &[MountRecord],
    mounter: &dyn Mounter,
) -> Result<(), ShareError> {
    let err = |source| ShareError::Mount {
        container: cid.to_string(),
        source,
    };
    for rec in records.iter().rev() {
        mounter.unmount_record(shared, rec).map_err(err)?;
    }
    let dir = shared.join(cid);
    let left: Vec<PathBuf> = mounter
        .mounts_beneath(shared)
        .map_err(err)?
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    if !left.is_empty() {
        return Err(ShareError::StillMounted {
            container: cid.to_string(),
            dir,
            left,
        });
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ShareError::Remove {
            container: cid.to_string(),
            dir,
            source,
        }),
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

    fn plan(spec: &Spec, rootfs: &Path, shm: Option<&Path>) -> SharePlan {
        plan_container_share(spec, "c1", rootfs, Path::new(GUEST_SHARED_ROOT), shm).unwrap()
    }

    #[test]
    fn rewrites_root_and_binds_keeps_guest_mounts() {
        let spec = spec_json(
            r#"{"destination":"/proc","type":"proc","source":"proc"},
               {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid"]},
               {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","rw"]},
               {"destination":"/etc/hosts","source":"/var/lib/x/hosts","options":["bind","ro"]}"#,
        );
        let plan = plan(&spec, Path::new("/b/c1/rootfs"), None);
        assert_eq!(
            plan.binds,
            vec![
                BindPlan {
                    source: "/b/c1/rootfs".into(),
                    rel: "c1/rootfs".into(),
                    readonly: false
                },
                BindPlan {
                    source: "/srv/data".into(),
                    rel: "c1/volumes/0".into(),
                    readonly: false
                },
                BindPlan {
                    source: "/var/lib/x/hosts".into(),
                    rel: "c1/volumes/1".into(),
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
        let p = plan(&spec, Path::new("/b/c1/rootfs"), Some(shm));
        // Only the rootfs and /etc/hosts come from the host.
        assert_eq!(p.binds.len(), 2, "{:?}", p.binds);
        assert_eq!(
            p.binds[1].source,
            Path::new("/var/lib/c/sandboxes/s1/hosts")
        );
        let mounts = p.spec.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(shm));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/run/vessel/shared/c1/volumes/0"))
        );
        // Outside a CRI pod, the same mount is an ordinary volume.
        assert_eq!(plan(&spec, Path::new("/r"), None).binds.len(), 3);
    }

    #[test]
    fn rejects_unshareable_mounts() {
        for m in [
            r#"{"destination":"/x","type":"bind","source":"relative/path","options":["rbind"]}"#,
            r#"{"destination":"/x","type":"nfs","source":"server:/export"}"#,
        ] {
            let spec = spec_json(m);
            let err = plan_container_share(&spec, "c1", Path::new("/r"), Path::new("/g"), None)
                .unwrap_err();
            assert!(matches!(err, ShareError::UnsupportedMount { .. }), "{err}");
            assert!(err.to_string().contains("/x"), "{err}");
        }
    }

    /// Records calls; a unit-test stand-in for [`crate::mounts::HostMounter`], whose real
    /// behaviour is covered by the root-only tests below and by the containerd tests.
    #[derive(Default)]
    struct RecordingMounter {
        mounted: Mutex<Vec<MountRecord>>,
        fail_on: Option<PathBuf>,
    }

    impl Mounter for RecordingMounter {
        fn bind_beneath(
            &self,
            root: &Path,
            rel: &Path,
            source: &Path,
            _ro: bool,
            record: &mut dyn FnMut(&MountRecord),
        ) -> Result<MountRecord, MountError> {
            let mut m = self.mounted.lock().unwrap();
            let rec = MountRecord {
                target: root.join(rel),
                mnt_id: m.len() as u64 + 100,
                root_dev: 0,
                root_ino: 0,
            };
            record(&rec);
            if self.fail_on.as_deref() == Some(rel) {
                return Err(MountError::MountPoint {
                    path: source.into(),
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            m.push(rec.clone());
            Ok(rec)
        }
        fn unmount_record(&self, _root: &Path, rec: &MountRecord) -> Result<usize, MountError> {
            let mut m = self.mounted.lock().unwrap();
            let before = m.len();
            m.retain(|r| r != rec);
            Ok(before - m.len())
        }
        fn unmount_all_beneath(&self, root: &Path) -> Result<usize, MountError> {
            let mut m = self.mounted.lock().unwrap();
            let before = m.len();
            m.retain(|r| !r.target.starts_with(root));
            Ok(before - m.len())
        }
        fn mounts_beneath(&self, root: &Path) -> Result<Vec<PathBuf>, MountError> {
            Ok(self
                .mounted
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.target.starts_with(root))
                .map(|r| r.target.clone())
                .collect())
        }
        fn mount(&self, _m: &crate::rootfs::RootfsMount, _t: &Path) -> Result<(), MountError> {
            Ok(())
        }
        fn share_subtree(&self, _dir: &Path) -> Result<(), MountError> {
            Ok(())
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        plan: SharePlan,
    }

    impl Fixture {
        fn shared(&self) -> PathBuf {
            self.dir.path().join("shared")
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        let spec = spec_json(&format!(
            r#"{{"destination":"/v","type":"bind","source":"{}","options":["rbind","ro"]}}"#,
            vol.display()
        ));
        let plan = plan_container_share(&spec, "c1", &rootfs, Path::new("/g"), None).unwrap();
        Fixture { dir, plan }
    }

    #[test]
    fn apply_records_before_mounting_and_release_cleans_up() {
        let f = fixture();
        let mounter = RecordingMounter::default();
        let mut recorded = Vec::new();
        let done = apply_share(&f.plan, "c1", &f.shared(), &mounter, &mut |r| {
            recorded.push(r.clone())
        })
        .unwrap();
        assert_eq!(done, recorded);
        assert_eq!(done.len(), 2);
        std::fs::create_dir_all(f.shared().join("c1/written-by-guest")).unwrap();
        release_share(&f.shared(), "c1", &done, &mounter).unwrap();
        assert!(mounter.mounted.lock().unwrap().is_empty());
        assert!(!f.shared().join("c1").exists());
    }

    #[test]
    fn apply_rolls_back_on_failure() {
        let f = fixture();
        let mounter = RecordingMounter {
            fail_on: Some(PathBuf::from("c1/volumes/0")),
            ..Default::default()
        };
        let err = apply_share(&f.plan, "c1", &f.shared(), &mounter, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ShareError::Mount { .. }), "{err}");
        assert!(
            mounter.mounted.lock().unwrap().is_empty(),
            "rootfs bind not rolled back"
        );
    }

    #[test]
    fn missing_volume_source_is_reported() {
        let mut f = fixture();
        f.plan.binds[1].source = "/nonexistent/vessel-test".into();
        let mounter = RecordingMounter::default();
        let err = apply_share(&f.plan, "c1", &f.shared(), &mounter, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ShareError::MissingSource { .. }), "{err}");
        assert!(mounter.mounted.lock().unwrap().is_empty());
    }

    fn need_root() -> std::sync::MutexGuard<'static, ()> {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CAP_SYS_ADMIN) to bind-mount"
        );
        crate::safe_mount::serial_mount_tests()
    }

    /// The real mounter on real mounts: the read-only volume is read-only, the release
    /// leaves the sources intact.
    #[test]
    fn host_mounter_bind_and_release() {
        use crate::mounts::HostMounter;
        let _serial = need_root();
        let f = fixture();
        std::fs::write(f.plan.binds[0].source.join("marker"), b"hi").unwrap();
        let done = apply_share(&f.plan, "c1", &f.shared(), &HostMounter, &mut |_| {}).unwrap();
        let shared = f.shared();
        assert_eq!(
            std::fs::read(shared.join("c1/rootfs/marker")).unwrap(),
            b"hi"
        );
        let ro = std::fs::write(shared.join("c1/volumes/0/x"), b"x").unwrap_err();
        assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");
        assert_eq!(HostMounter.mounts_beneath(&shared).unwrap().len(), 2);
        release_share(&shared, "c1", &done, &HostMounter).unwrap();
        assert!(HostMounter.mounts_beneath(&shared).unwrap().is_empty());
        assert!(!shared.join("c1").exists());
        // The source survived the release.
        assert_eq!(
            std::fs::read(f.plan.binds[0].source.join("marker")).unwrap(),
            b"hi"
        );
    }

    /// The compromised guest: before the container's binds are made it plants symlinks where
    /// they go (as it can through the share). No mount lands outside the shared dir, the
    /// symlink targets are untouched, the share fails cleanly and nothing stays mounted.
    #[test]
    fn planted_symlinks_never_redirect_a_bind() {
        use crate::mounts::HostMounter;
        let _serial = need_root();
        for plant in ["c1", "c1/rootfs", "c1/volumes", "c1/volumes/0"] {
            let f = fixture();
            let shared = f.shared();
            let victim = f.dir.path().join("host-etc");
            std::fs::create_dir_all(&victim).unwrap();
            std::fs::write(victim.join("passwd"), b"root:x:0:0").unwrap();
            let at = shared.join(plant);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&victim, &at).unwrap();
            let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let err = apply_share(&f.plan, "c1", &shared, &HostMounter, &mut |_| {}).unwrap_err();
            assert!(err.to_string().contains("c1"), "{plant}: {err}");
            let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert_eq!(
                before.lines().count(),
                after.lines().count(),
                "{plant}: a mount was left: {err}"
            );
            assert!(
                !after.contains(victim.to_str().unwrap()),
                "{plant}: mounted on the symlink's target"
            );
            assert_eq!(std::fs::read(victim.join("passwd")).unwrap(), b"root:x:0:0");
            assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "{plant}");
            assert!(HostMounter.mounts_beneath(&shared).unwrap().is_empty());
            release_share(&shared, "c1", &[], &HostMounter).unwrap();
            assert!(victim.join("passwd").exists(), "release followed {plant}");
        }
    }
}
