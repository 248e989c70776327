//! The containers of one `--root`: a directory per container id holding its record
//! (`state.json`, written only by the container's holder process) and the holder's control
//! socket. The directory's creation is the id's reservation (`mkdir` fails if it exists).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vessel_runtime::state::ProcessIdentity;

use crate::errors::CliError;

/// runc's default is `/run/runc`; ours sits beside it.
pub const DEFAULT_ROOT: &str = "/run/vessel-runc";
/// A record is a few hundred bytes; anything larger is not one of ours.
const MAX_RECORD: u64 = 1 << 20;

/// Where a container is in its life (runc's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }

    /// runc's refusal to start a container in this status; None for a created one.
    pub fn start_refusal(self) -> Option<&'static str> {
        match self {
            Status::Created => None,
            Status::Running => Some("cannot start an already running container"),
            Status::Paused => Some("cannot start a container in the paused state"),
            Status::Stopped => Some("cannot start a container that has stopped"),
        }
    }

    /// Refuses `what` ("exec in") unless the container runs.
    pub fn unless_running(self, what: &str) -> Result<(), String> {
        match self {
            Status::Running => Ok(()),
            s => Err(format!("cannot {what} a {} container", s.as_str())),
        }
    }
}

/// runc's answer to a signal for a container that is not running.
pub const NOT_RUNNING: &str = "container not running";

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    /// The holder: the pid the engine sees as the container's.
    pub holder: ProcessIdentity,
    pub status: Status,
    /// The init's exit status once stopped.
    pub exit_status: Option<u32>,
    pub annotations: BTreeMap<String, String>,
}

impl Record {
    /// The status as the engine should see it: a holder that died without recording the
    /// container's end leaves a stopped container (runc's rule for a dead init).
    pub fn effective_status(&self) -> Status {
        if self.status != Status::Stopped && !self.holder.is_alive() {
            Status::Stopped
        } else {
            self.status
        }
    }
}

/// One `--root`.
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    fn path_of(&self, id: &str) -> Result<PathBuf, CliError> {
        vessel_protocol::ids::check_name("container id", id)?;
        Ok(self.root.join(id))
    }

    /// Reserves `id`: its directory is made (0700) or the id exists.
    pub fn create(&self, id: &str) -> Result<ContainerDir, CliError> {
        let path = self.path_of(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| CliError::io("creating the state root", &self.root, e))?;
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(ContainerDir { path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(CliError::Exists),
            Err(e) => Err(CliError::io("creating the container's state", &path, e)),
        }
    }

    /// Every container with a record, by id (a directory without one is a create in
    /// progress, or one that died before it recorded anything).
    pub fn records(&self) -> Result<Vec<Record>, CliError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CliError::io("listing", &self.root, e)),
        };
        let mut records: Vec<Record> = entries
            .flatten()
            .filter_map(|e| self.open(e.file_name().to_str()?).ok()?.read().ok())
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// An existing container's directory.
    pub fn open(&self, id: &str) -> Result<ContainerDir, CliError> {
        let path = self.path_of(id)?;
        if path.is_dir() {
            Ok(ContainerDir { path })
        } else {
            Err(CliError::NotExist)
        }
    }
}

/// One container's directory.
pub struct ContainerDir {
    path: PathBuf,
}

impl ContainerDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    fn record_path(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// The record, or NotExist while the holder has not written it yet (a create still in
    /// progress is not a container yet, as with runc).
    pub fn read(&self) -> Result<Record, CliError> {
        let path = self.record_path();
        let mut text = String::new();
        match fs::File::open(&path) {
            Ok(f) => f
                .take(MAX_RECORD)
                .read_to_string(&mut text)
                .map_err(|e| CliError::io("reading", &path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CliError::NotExist),
            Err(e) => return Err(CliError::io("reading", &path, e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            CliError::io(
                "parsing",
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Replaces the record atomically (a reader sees the old or the new one, whole).
    pub fn write(&self, record: &Record) -> Result<(), CliError> {
        let path = self.record_path();
        let tmp = self.path.join(".state.json.tmp");
        let text = serde_json::to_vec(record).map_err(|e| {
            CliError::io(
                "serializing",
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        fs::write(&tmp, text).map_err(|e| CliError::io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| CliError::io("replacing", &path, e))
    }

    /// Removes the directory and what is in it.
    pub fn remove(&self) -> Result<(), CliError> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::io("removing", &self.path, e)),
        }
    }
}

/// The current time as RFC 3339 (UTC), for `created`.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: ProcessIdentity, status: Status) -> Record {
        Record {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            holder,
            status,
            exit_status: None,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn create_reserves_the_id_and_open_finds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("root"));
        assert!(matches!(store.open("c1"), Err(CliError::NotExist)));
        let dir = store.create("c1").unwrap();
        assert!(matches!(store.create("c1"), Err(CliError::Exists)));
        assert!(matches!(store.create("../x"), Err(CliError::InvalidId(_))));
        // Reserved but not yet written: not a container yet.
        assert!(matches!(dir.read(), Err(CliError::NotExist)));
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        let r = record(me, Status::Created);
        dir.write(&r).unwrap();
        let opened = store.open("c1").unwrap();
        assert_eq!(opened.read().unwrap(), r);
        assert_eq!(store.records().unwrap(), vec![r]);
        opened.remove().unwrap();
        assert!(store.records().unwrap().is_empty());
        assert!(matches!(store.open("c1"), Err(CliError::NotExist)));
    }

    #[test]
    fn a_dead_holder_means_stopped() {
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert_eq!(
            record(me, Status::Running).effective_status(),
            Status::Running
        );
        let reused = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert_eq!(
            record(reused, Status::Running).effective_status(),
            Status::Stopped
        );
        assert_eq!(
            record(me, Status::Stopped).effective_status(),
            Status::Stopped
        );
    }

    #[test]
    fn runcs_refusals_follow_the_status() {
        assert_eq!(Status::Created.start_refusal(), None);
        assert_eq!(
            Status::Running.start_refusal(),
            Some("cannot start an already running container")
        );
        assert!(Status::Paused.start_refusal().is_some());
        assert!(Status::Stopped.start_refusal().is_some());
        assert_eq!(Status::Running.unless_running("exec in"), Ok(()));
        assert_eq!(
            Status::Paused.unless_running("exec in"),
            Err("cannot exec in a paused container".to_string())
        );
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let dir = store.create("c1").unwrap();
        fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let e = dir.read().unwrap_err().to_string();
        assert!(e.contains("parsing"), "{e}");
    }
}
