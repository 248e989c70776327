//! Per-sandbox state directory and the small JSON state file that lets a restarted shim, or
//! `containerd-shim-vessel-v2 delete`, find and release what a sandbox left behind.
//!
//! Layout of `<state_root>/<sandbox-id>/`:
//! * `state.json` — [`SandboxStateFile`]
//! * `vsock.sock` — the VMM's hybrid vsock socket (host end of the guest's vsock)
//! * `console.log` — the guest serial console; `vmm.log` — the VMM's own stderr
//! * `shared/` — exported to the guest over virtio-fs; `shared/<cid>/rootfs` and
//!   `shared/<cid>/volumes/<n>` are bind mounts of host paths

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest state file we read back; anything bigger is not ours.
const MAX_STATE_FILE_LEN: u64 = 1 << 20;
const STATE_FILE_VERSION: u32 = 2;
/// Longest Unix socket path (`sun_path` less its NUL): the VMM binds the vsock socket there.
/// (Guest-initiated vsock connections go to `<vsock>_<port>`; a port whose path is too long
/// just cannot be reached.)
const MAX_SOCKET_PATH: usize = 107;

/// Errors about the state directory and state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    InvalidId(#[from] vessel_protocol::ids::IdError),
    #[error("state dir {dir}: its sockets would be longer than a Unix socket path allows ({MAX_SOCKET_PATH} bytes); use a shorter runtime.state_root")]
    PathTooLong { dir: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Checks that `id` can be used as a single path component and in log lines (the rule of
/// [`vessel_protocol::ids::check_id`]).
pub fn validate_id(id: &str) -> Result<(), StateError> {
    Ok(vessel_protocol::ids::check_id(id)?)
}

/// Paths of one sandbox's state directory: `<state_root>/<namespace>/<sandbox-id>/`, so two
/// containerd namespaces may use the same id without touching each other's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    dir: PathBuf,
}

impl SandboxPaths {
    pub fn new(
        state_root: &Path,
        namespace: &str,
        sandbox_id: &str,
    ) -> Result<SandboxPaths, StateError> {
        vessel_protocol::ids::check_namespace(namespace)?;
        vessel_protocol::ids::check_name("sandbox id", sandbox_id)?;
        let paths = SandboxPaths {
            dir: state_root.join(namespace).join(sandbox_id),
        };
        if paths.vsock().as_os_str().len() > MAX_SOCKET_PATH {
            return Err(StateError::PathTooLong { dir: paths.dir });
        }
        Ok(paths)
    }
    /// The sandbox dirs of one namespace live here.
    pub fn namespace_dir(state_root: &Path, namespace: &str) -> PathBuf {
        state_root.join(namespace)
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The counters the VMM rewrites (`vessel_protocol::vmm_metrics`).
    pub fn vmm_metrics(&self) -> PathBuf {
        self.dir.join(vessel_protocol::vmm_metrics::FILE_NAME)
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// Socket of an agent run on the host instead of in a VM (tests).
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }
    /// The empty directory the VMM's jail is built on.
    pub fn jail(&self) -> PathBuf {
        self.dir.join("jail")
    }
    pub fn container_shared(&self, container_id: &str) -> Result<PathBuf, StateError> {
        validate_id(container_id)?;
        Ok(self.shared().join(container_id))
    }

    /// Creates the directory (and `shared/`), private to root.
    pub fn create(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for dir in [self.dir.clone(), self.shared()] {
            builder.create(&dir).map_err(|source| StateError::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes the namespace dir above this sandbox dir if it is now empty (best effort).
    pub fn remove_empty_namespace_dir(&self) {
        if let Some(ns_dir) = self.dir.parent() {
            let _ = std::fs::remove_dir(ns_dir);
        }
    }
}

/// Identifies a process across pid reuse: its pid plus its start time in clock ticks since
/// boot (field 22 of `/proc/<pid>/stat`).
/// A sandbox found under the state root, with what its state file says.
#[derive(Debug)]
pub struct ListedSandbox {
    pub namespace: String,
    pub id: String,
    pub paths: SandboxPaths,
    /// `Ok(None)`: no state file (yet).
    pub state: Result<Option<SandboxStateFile>, StateError>,
}

/// Every `<root>/<namespace>/<id>` whose names are valid, in directory order (none when the
/// root does not exist).
pub fn list_sandboxes(root: &Path) -> Result<Vec<ListedSandbox>, StateError> {
    let namespaces = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Io {
                op: "reading",
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for ns in namespaces.flatten() {
        let namespace = ns.file_name().to_string_lossy().into_owned();
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for entry in ids.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(paths) = SandboxPaths::new(root, &namespace, &id) else {
                continue;
            };
            let state = SandboxStateFile::read(&paths.state_file());
            out.push(ListedSandbox {
                namespace: namespace.clone(),
                id,
                paths,
                state,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessIdentity {
    /// Reads the identity of a live process; `None` if it is gone.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(ProcessIdentity {
            pid,
            start_time: parse_start_time(&stat)?,
        })
    }

    /// True if a process with this pid exists, is the same process (not a reused pid) and
    /// has not exited (a zombie waiting for its parent counts as gone).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        parse_start_time(&stat) == Some(self.start_time)
            && !matches!(parse_state(&stat), Some('Z' | 'X' | 'x'))
    }
}

/// Field 3 (state) of a `/proc/<pid>/stat` line.
fn parse_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so parse after the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first token; starttime is field 22 → index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A bind of one container's, as `state.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedMount {
    pub container: String,
    #[serde(flatten)]
    pub record: crate::safe_mount::MountRecord,
}

/// What `state.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStateFile {
    pub version: u32,
    pub sandbox_id: String,
    /// The VMM (or host agent) process, once spawned.
    pub vmm: Option<ProcessIdentity>,
    /// Binds this sandbox made into its shared dir, in the order they were made, each
    /// recorded before it exists (a crash in between leaves at most a stale entry).
    pub mounts: Vec<RecordedMount>,
    /// The host cgroup directories the VMM was placed in (the pod's `cgroupsPath`, one per
    /// hierarchy), recorded before the VMM starts; removed at cleanup.
    #[serde(default)]
    pub cgroup: Vec<PathBuf>,
    /// What was made in the pod's network namespace (recorded before it exists); undone at
    /// cleanup.
    #[serde(default)]
    pub network: Option<crate::network::NetworkRecord>,
    pub created_unix_secs: u64,
    /// The Kubernetes pod (name, namespace) of a CRI sandbox, for `vessel monitor`'s labels.
    #[serde(default)]
    pub cri_pod: Option<(String, String)>,
    /// Milliseconds from the start until the agent's `CreateSandbox` answered.
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// Whether the VM was restored from a snapshot (false: cold boot), once it is up.
    #[serde(default)]
    pub restored: Option<bool>,
}

impl SandboxStateFile {
    pub fn new(sandbox_id: &str) -> SandboxStateFile {
        SandboxStateFile {
            version: STATE_FILE_VERSION,
            sandbox_id: sandbox_id.to_string(),
            vmm: None,
            mounts: Vec::new(),
            cgroup: Vec::new(),
            network: None,
            cri_pod: None,
            start_ms: None,
            restored: None,
            created_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Writes atomically (temp file + rename) so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let io = |op, source| StateError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&data).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))
    }

    /// Reads a state file; `Ok(None)` if there is none.
    pub fn read(path: &Path) -> Result<Option<SandboxStateFile>, StateError> {
        use std::io::Read;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    op: "opening",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut data = Vec::new();
        f.take(MAX_STATE_FILE_LEN + 1)
            .read_to_end(&mut data)
            .map_err(|source| StateError::Io {
                op: "reading",
                path: path.to_path_buf(),
                source,
            })?;
        if data.len() as u64 > MAX_STATE_FILE_LEN {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: "larger than 1 MiB".into(),
            });
        }
        let state: SandboxStateFile =
            serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if state.version != STATE_FILE_VERSION {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("unknown version {}", state.version),
            });
        }
        Ok(Some(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_keyed_by_namespace() {
        assert!(SandboxPaths::new(Path::new("/run/vessel"), "default", "../etc").is_err());
        assert!(SandboxPaths::new(Path::new("/run/vessel"), "../x", "sb").is_err());
        let a = SandboxPaths::new(Path::new("/run/vessel"), "default", "sb1").unwrap();
        let b = SandboxPaths::new(Path::new("/run/vessel"), "k8s.io", "sb1").unwrap();
        assert_ne!(
            a.dir(),
            b.dir(),
            "same id in two namespaces must not share a dir"
        );
        // A socket path the kernel cannot bind is refused up front, with the reason.
        let long_root = PathBuf::from(format!("/{}", "r".repeat(30)));
        let err = SandboxPaths::new(&long_root, "default", &"f".repeat(64)).unwrap_err();
        assert!(matches!(err, StateError::PathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("state_root"), "{err}");
    }

    #[test]
    fn layout() {
        let p = SandboxPaths::new(Path::new("/run/vessel"), "default", "sb1").unwrap();
        assert_eq!(p.dir(), Path::new("/run/vessel/default/sb1"));
        assert_eq!(p.vsock(), Path::new("/run/vessel/default/sb1/vsock.sock"));
        assert_eq!(
            p.container_shared("c1").unwrap(),
            Path::new("/run/vessel/default/sb1/shared/c1")
        );
        assert!(p.container_shared("../c1").is_err());
    }

    #[test]
    fn state_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "default", "sb1").unwrap();
        paths.create().unwrap();
        assert!(paths.shared().is_dir());
        assert_eq!(SandboxStateFile::read(&paths.state_file()).unwrap(), None);
        let mut s = SandboxStateFile::new("sb1");
        s.vmm = ProcessIdentity::of(std::process::id() as i32);
        s.mounts.push(RecordedMount {
            container: "c1".into(),
            record: crate::safe_mount::MountRecord {
                target: paths.shared().join("c1/rootfs"),
                mnt_id: 812,
                root_dev: 2049,
                root_ino: 1234,
            },
        });
        s.cgroup.push("/sys/fs/cgroup/memory/pod/sb1".into());
        s.write(&paths.state_file()).unwrap();
        let back = SandboxStateFile::read(&paths.state_file())
            .unwrap()
            .unwrap();
        assert_eq!(back, s);
        assert!(!paths.dir().join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_state_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state.json");
        std::fs::write(&f, b"{not json").unwrap();
        assert!(matches!(
            SandboxStateFile::read(&f),
            Err(StateError::Corrupt { .. })
        ));
        std::fs::write(&f, vec![b' '; (MAX_STATE_FILE_LEN + 10) as usize]).unwrap();
        assert!(matches!(
            SandboxStateFile::read(&f),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn process_identity_tells_live_from_gone() {
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let reused = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity::of(child.id() as i32);
        child.wait().unwrap();
        if let Some(id) = id {
            assert!(!id.is_alive());
        }
    }

    #[test]
    fn start_time_parsing_survives_odd_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_state(stat), Some('S'));
    }
}
