//! The fuzz corpus replayed as unit tests (cheap: no sanitizers, a few hundred inputs), the
//! committed seeds kept in step with the input format, and the harnesses shown to reach deep
//! states with their seeds (a harness that only ever hits error paths fuzzes nothing).

use std::path::{Path, PathBuf};

use super::*;

/// A target of `fuzz/` that lives here: its name and its function over any bytes.
type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[
    ("virtio_mmio", |d| {
        mmio::run(d);
    }),
    ("vsock", |d| {
        vsock::run(d);
    }),
    ("virtio_net", |d| {
        net::run(d);
    }),
    ("virtio_fs", |d| {
        fs::run(d);
    }),
    ("snapshot_manifest", |d| {
        snapshot::run(d);
    }),
];

fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "virtio_mmio" => mmio::seeds(),
        "vsock" => vsock::seeds(),
        "virtio_net" => net::seeds(),
        "virtio_fs" => fs::seeds(),
        "snapshot_manifest" => snapshot::seeds(),
        _ => unreachable!("unknown target {target}"),
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of `fuzz/corpus/<target>/`, sorted.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("corpus file");
            (p, data)
        })
        .collect()
}

fn replay(target: &str) {
    let (_, f) = TARGETS.iter().find(|(t, _)| *t == target).expect("target");
    let files = corpus(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for (path, data) in files {
        eprintln!("{target}: {}", path.display());
        f(&data);
    }
}

#[test]
fn corpus_virtio_mmio() {
    replay("virtio_mmio");
}

#[test]
fn corpus_vsock() {
    replay("vsock");
}

#[test]
fn corpus_virtio_net() {
    replay("virtio_net");
}

#[test]
fn net_seeds_move_frames_both_ways_and_survive_hostile_rings() {
    let s = net::run(&seed(net::seeds(), "both-ways"));
    assert_eq!((s.frames_to_guest, s.frames_to_host), (2, 1), "{s:?}");
    let s = net::run(&seed(net::seeds(), "hostile"));
    assert_eq!(s.resets, 1, "{s:?}");
    assert!(s.frames_to_guest >= 1, "traffic after the reset: {s:?}");
}

#[test]
fn corpus_virtio_fs() {
    replay("virtio_fs");
}

#[test]
fn corpus_snapshot_manifest() {
    replay("snapshot_manifest");
}

/// `cargo test -p vessel-vmm write_seed_corpus -- --ignored` rewrites the seeds after a
/// change of an input format.
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*"]
fn write_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, data) in seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed");
        }
    }
}

#[test]
fn committed_seeds_match_the_input_formats() {
    for (target, _) in TARGETS {
        for (name, data) in seeds(target) {
            let path = corpus_dir(target).join(format!("seed-{name}"));
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == data,
                "{} is stale: run `cargo test -p vessel-vmm write_seed_corpus -- --ignored`",
                path.display()
            );
        }
    }
}

fn seed(list: Vec<(&'static str, Vec<u8>)>, name: &str) -> Vec<u8> {
    list.into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d)
        .expect("seed")
}

#[test]
fn vsock_seeds_reach_established_connections() {
    let s = vsock::run(&seed(vsock::seeds(), "guest-connect"));
    assert_eq!(s.accepted, 1, "{s:?}");
    assert!(s.host_bytes_in >= b"hello host".len(), "{s:?}");
    assert!(s.rx_ops[usize::from(vsock::OP_RESPONSE)] >= 1, "{s:?}");
    assert!(s.guest_bytes_in >= 16, "host data reached the guest: {s:?}");

    let s = vsock::run(&seed(vsock::seeds(), "host-connect"));
    assert_eq!(s.rx_ops[usize::from(vsock::OP_REQUEST)], 1, "{s:?}");
    // "OK <port>\n" and the guest's bytes.
    assert!(s.host_bytes_in > b"from the guest".len() + 4, "{s:?}");
    assert!(s.guest_bytes_in >= 100, "{s:?}");

    let s = vsock::run(&seed(vsock::seeds(), "refused"));
    assert!(s.rx_ops[usize::from(vsock::OP_RST)] >= 2, "{s:?}");
}

#[test]
fn mmio_seeds_activate_and_snapshot() {
    for (name, device_type) in [("vsock-activate", 19), ("fs-activate", 26)] {
        let s = mmio::run(&seed(mmio::seeds(), name));
        assert_eq!(s.device_type, device_type);
        assert!(s.activated, "{name}: {s:?}");
        assert!(s.snapshots >= 2, "{name}: {s:?}");
    }
    let s = mmio::run(&seed(mmio::seeds(), "vsock-hostile"));
    assert!(!s.activated, "{s:?}");
}

#[test]
fn fs_seeds_hold_sessions() {
    let s = fs::run(&seed(fs::seeds(), "session"));
    assert!(s.ok_replies >= 9, "{s:?}");
    assert!(s.nodes >= 2 && s.handles >= 3, "{s:?}");
    let s = fs::run(&seed(fs::seeds(), "escapes"));
    assert!(s.error_replies >= 4, "{s:?}");
    let s = fs::run(&seed(fs::seeds(), "malformed"));
    assert!(s.error_replies >= 3, "{s:?}");
}

#[test]
fn snapshot_seeds_restore_devices() {
    let s = snapshot::run(&seed(snapshot::seeds(), "manifest"));
    assert!(s.parsed && s.serial_restored, "{s:?}");
    assert_eq!((s.devices_restored, s.devices_refused), (2, 0), "{s:?}");
    for name in ["vsock-state", "vsock-hostile-indices", "fs-state"] {
        let s = snapshot::run(&seed(snapshot::seeds(), name));
        assert_eq!(s.devices_restored, 1, "{name}: {s:?}");
    }
    assert_eq!(
        snapshot::run(&seed(snapshot::seeds(), "future-version")),
        snapshot::Summary::default()
    );
}
