use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Makes fake snapshots; answers checks from a script of outcomes (then `Usable`).
#[derive(Default)]
struct FakeTool {
    creates: AtomicUsize,
    checks: AtomicUsize,
    fail_create: bool,
    /// Create but write no manifest.
    no_manifest: bool,
    outcomes: Mutex<Vec<CheckOutcome>>,
    create_delay: Duration,
}

impl SnapshotTool for FakeTool {
    fn create(&self, _: &Config, work: &Path, target: &Path, _: Instant) -> Result<(), String> {
        let n = self.creates.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(self.create_delay);
        assert!(work.is_dir() && !target.exists());
        if self.fail_create {
            return Err("guest kernel panicked".into());
        }
        std::fs::create_dir(target).map_err(|e| e.to_string())?;
        if !self.no_manifest {
            std::fs::write(
                target.join(MANIFEST),
                format!(r#"{{"vmm_version":"0.1.0","created_unix_ms":{n},"boot":{{"mem_mib":128,"vcpus":1,"kernel":{{"path":"/k"}}}}}}"#),
            )
            .map_err(|e| e.to_string())?;
        }
        std::fs::write(target.join("memory.bin"), vec![1u8; 8192]).map_err(|e| e.to_string())
    }

    fn check(&self, _: &Config, dir: &Path) -> Result<CheckOutcome, String> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        assert!(dir.join(MANIFEST).is_file());
        let mut o = self.outcomes.lock().unwrap();
        Ok(if o.is_empty() {
            CheckOutcome::Usable
        } else {
            o.remove(0)
        })
    }
}

struct Env {
    dir: tempfile::TempDir,
    config: Config,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    for (name, field) in [("vessel-vmm", 0), ("vmlinux", 1), ("initrd.cpio", 2)] {
        let p = dir.path().join(name);
        std::fs::write(&p, name).unwrap();
        match field {
            0 => config.hypervisor.path = p,
            1 => config.hypervisor.kernel = p,
            _ => config.hypervisor.initrd = p,
        }
    }
    config.snapshot.dir = dir.path().join("snapshots");
    Env { dir, config }
}

fn store(e: &Env, tool: &Arc<FakeTool>) -> SnapshotStore {
    SnapshotStore::new(e.config.snapshot.dir.clone(), tool.clone())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn dir_names(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn key_follows_every_input() {
    let e = env();
    let k = snapshot_key(&e.config).unwrap();
    assert!(valid_key(&k), "{k}");
    assert_eq!(snapshot_key(&e.config).unwrap(), k, "stable");
    let mut c = e.config.clone();
    c.hypervisor.memory_mib = 256;
    assert_ne!(snapshot_key(&c).unwrap(), k);
    let mut c = e.config.clone();
    c.hypervisor.kernel_params = "debug".into();
    assert_ne!(snapshot_key(&c).unwrap(), k);
    let mut c = e.config.clone();
    c.hypervisor.vcpus = 2;
    assert_ne!(snapshot_key(&c).unwrap(), k);
    // A rebuilt kernel (or VMM, or initrd) at the same path is a new key.
    std::fs::write(&e.config.hypervisor.kernel, "a new kernel build").unwrap();
    assert_ne!(snapshot_key(&e.config).unwrap(), k);
    let mut c = e.config.clone();
    c.hypervisor.initrd = e.dir.path().join("missing.cpio");
    let err = snapshot_key(&c).unwrap_err();
    assert!(
        matches!(&err, SnapshotStoreError::Input { what: "initrd", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("missing.cpio"), "{err}");
}

#[test]
fn ensure_makes_the_snapshot_once_and_reuses_it() {
    let e = env();
    let tool = Arc::new(FakeTool::default());
    let s = store(&e, &tool);
    let p1 = s.ensure(&e.config, soon()).unwrap();
    let p2 = s.ensure(&e.config, soon()).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(p1, s.path_for(&snapshot_key(&e.config).unwrap()));
    assert_eq!(tool.creates.load(Ordering::SeqCst), 1);
    assert_eq!(
        tool.checks.load(Ordering::SeqCst),
        1,
        "an existing one is checked"
    );
    assert!(p1.join(MANIFEST).is_file());
    // Nothing left over but the snapshot and its lock file.
    let key = snapshot_key(&e.config).unwrap();
    assert_eq!(
        dir_names(s.dir()),
        vec![format!(".{key}.lock"), key.clone()]
    );
}

#[test]
fn concurrent_starts_make_one_snapshot() {
    let e = env();
    let tool = Arc::new(FakeTool {
        create_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let s = Arc::new(store(&e, &tool));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let s = s.clone();
            let c = e.config.clone();
            std::thread::spawn(move || s.ensure(&c, soon()).unwrap())
        })
        .collect();
    let paths: Vec<PathBuf> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(tool.creates.load(Ordering::SeqCst), 1);
}

#[test]
fn a_rejected_snapshot_is_removed_and_made_again() {
    let e = env();
    let tool = Arc::new(FakeTool::default());
    let s = store(&e, &tool);
    let path = s.ensure(&e.config, soon()).unwrap();
    let first = std::fs::read_to_string(path.join(MANIFEST)).unwrap();
    tool.outcomes.lock().unwrap().push(CheckOutcome::Rejected(
        "snapshot made by vessel-vmm 0.0.9".into(),
    ));
    let again = s.ensure(&e.config, soon()).unwrap();
    assert_eq!(again, path);
    assert_eq!(tool.creates.load(Ordering::SeqCst), 2);
    assert_ne!(
        std::fs::read_to_string(again.join(MANIFEST)).unwrap(),
        first
    );
    // An incomplete directory (no manifest) is replaced too, without asking the VMM.
    std::fs::remove_file(path.join(MANIFEST)).unwrap();
    let checks = tool.checks.load(Ordering::SeqCst);
    s.ensure(&e.config, soon()).unwrap();
    assert_eq!(tool.creates.load(Ordering::SeqCst), 3);
    assert_eq!(tool.checks.load(Ordering::SeqCst), checks);
}

#[test]
fn a_failed_creation_is_an_error_and_leaves_nothing() {
    let e = env();
    for tool in [
        FakeTool {
            fail_create: true,
            ..Default::default()
        },
        FakeTool {
            no_manifest: true,
            ..Default::default()
        },
    ] {
        let tool = Arc::new(tool);
        let s = store(&e, &tool);
        let err = s.ensure(&e.config, soon()).unwrap_err();
        assert!(matches!(err, SnapshotStoreError::Create { .. }), "{err}");
        let key = snapshot_key(&e.config).unwrap();
        assert_eq!(dir_names(s.dir()), vec![format!(".{key}.lock")], "{err}");
    }
}

#[test]
fn list_and_remove() {
    let e = env();
    let tool = Arc::new(FakeTool::default());
    let s = store(&e, &tool);
    assert!(s.list().unwrap().is_empty());
    let path = s.ensure(&e.config, soon()).unwrap();
    std::fs::create_dir_all(s.dir().join(".tmp-0123456789abcdef-1")).unwrap();
    let list = s.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].path, path);
    assert!(list[0].disk_bytes >= 8192, "{list:?}");
    assert!(list[0].summary.contains("128 MiB"), "{}", list[0].summary);
    assert!(matches!(
        s.remove("../etc"),
        Err(SnapshotStoreError::BadKey(_))
    ));
    assert!(s.remove(&list[0].key).unwrap());
    assert!(!path.exists());
    assert!(!s.remove(&list[0].key).unwrap());
    // `create --force` replaces, plain `create` keeps.
    let p = s.create(&e.config, soon(), false).unwrap();
    s.create(&e.config, soon(), false).unwrap();
    assert_eq!(tool.creates.load(Ordering::SeqCst), 2);
    s.create(&e.config, soon(), true).unwrap();
    assert_eq!(tool.creates.load(Ordering::SeqCst), 3);
    assert!(p.join(MANIFEST).is_file());
}
