//! Container setup without root: the OCI rules for mounts, masked and read-only paths,
//! sysctls, devices, propagation and namespaces, run against a temporary rootfs through the
//! recording [`Syscall`](crate::syscall::Syscall) fake. The same paths run for real, as root,
//! in the VM tests (`tests/agent_vm.rs`).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;
use oci_spec::runtime::Spec;

use super::child::{enter_namespaces, InitConfig};
use super::mounts::CgroupMountStyle;
use super::namespaces::NsKind;
use super::rootfs::{setup, RootfsExtras};
use crate::sandbox::{mount_storages, StorageSpec};
use crate::syscall_fake::{Call, RecordingSyscall};

struct Fixture {
    _dir: tempfile::TempDir,
    /// A host directory beside the rootfs (a bind source, or what a symlink aims at).
    host: PathBuf,
    rootfs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let rootfs = dir.path().join("bundle/rootfs");
    for d in ["etc", "proc", "dev", "sys"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::create_dir_all(&host).unwrap();
    Fixture {
        _dir: dir,
        host,
        rootfs,
    }
}

fn spec(json: serde_json::Value) -> Spec {
    let mut base = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}});
    base.as_object_mut()
        .unwrap()
        .extend(json.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn v2() -> CgroupMountStyle {
    CgroupMountStyle::V2 {
        root_flags: "favordynmods".into(),
    }
}

fn run_setup(
    f: &Fixture,
    sys: &RecordingSyscall,
    spec: &Spec,
    resolv: Option<&Path>,
) -> Result<(), super::ChildError> {
    let style = v2();
    let extras = RootfsExtras {
        resolv_conf: resolv,
        cgroup_style: &style,
        terminal: false,
    };
    setup(sys, spec, &f.rootfs, &extras, &mut |_| {}).map(|_| ())
}

fn mount(source: Option<&str>, target: &str, fstype: Option<&str>, flags: MsFlags) -> Call {
    Call::Mount {
        source: source.map(str::to_owned),
        target: target.to_owned(),
        fstype: fstype.map(str::to_owned),
        flags,
        data: None,
    }
}

fn with_data(call: Call, d: &str) -> Call {
    match call {
        Call::Mount {
            source,
            target,
            fstype,
            flags,
            ..
        } => Call::Mount {
            source,
            target,
            fstype,
            flags,
            data: Some(d.to_owned()),
        },
        other => other,
    }
}

fn targets(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Mount { target, .. } => Some(target.clone()),
            _ => None,
        })
        .collect()
}

const BIND_REMOUNT_RO: MsFlags = MsFlags::MS_BIND
    .union(MsFlags::MS_REMOUNT)
    .union(MsFlags::MS_RDONLY);

#[test]
fn spec_mounts_go_in_order_with_their_flags_data_and_propagation() {
    let f = fixture();
    let data = f.host.join("data");
    fs::create_dir_all(&data).unwrap();
    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "bind", "source": data,
             "options": ["rbind", "ro", "nosuid", "rslave"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid"]}
        ]
    }));
    run_setup(&f, &sys, &s, None).unwrap();
    let calls = sys.mounts();
    let nosuid = MsFlags::MS_NOSUID;
    let rec_bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    let host_data = data.display().to_string();
    let expected = [
        // Nothing mounted below may propagate back to the agent (no rootfsPropagation: rslave).
        mount(None, "/", None, MsFlags::MS_SLAVE | MsFlags::MS_REC),
        mount(Some("/"), "/", None, rec_bind),
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            nosuid | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        ),
        with_data(
            mount(
                Some("tmpfs"),
                "/dev",
                Some("tmpfs"),
                nosuid | MsFlags::MS_STRICTATIME,
            ),
            "mode=755,size=65536k",
        ),
        // A bind ignores flags until it is remounted; propagation is a call of its own.
        mount(Some(&host_data), "/data", None, rec_bind),
        mount(
            None,
            "/data",
            None,
            BIND_REMOUNT_RO | MsFlags::MS_REC | nosuid,
        ),
        mount(None, "/data", None, MsFlags::MS_SLAVE | MsFlags::MS_REC),
        // cgroup2 keeps the hierarchy's root flags (a bare mount would reset them).
        with_data(
            mount(
                Some("cgroup2"),
                "/sys/fs/cgroup",
                Some("cgroup2"),
                MsFlags::MS_RDONLY | nosuid,
            ),
            "favordynmods",
        ),
    ];
    assert_eq!(calls[..expected.len()], expected[..], "{calls:#?}");
    assert!(f.rootfs.join("data").is_dir(), "bind mount point made");
    assert!(f.rootfs.join("sys/fs/cgroup").is_dir());
}

#[test]
fn a_rootfs_propagation_in_the_spec_replaces_the_default() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({"linux": {"rootfsPropagation": "rprivate"}}));
    run_setup(&f, &sys, &s, None).unwrap();
    assert_eq!(
        sys.mounts()[0],
        mount(None, "/", None, MsFlags::MS_PRIVATE | MsFlags::MS_REC)
    );
}

#[test]
fn a_destination_symlinked_out_of_the_rootfs_is_mounted_inside_it() {
    let f = fixture();
    // From the rootfs, ../../host is the host directory beside it.
    symlink("../../host", f.rootfs.join("evil")).unwrap();
    symlink(&f.host, f.rootfs.join("abs")).unwrap();
    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({"mounts": [
        {"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/abs/y", "type": "tmpfs", "source": "tmpfs"}
    ]}));
    run_setup(&f, &sys, &s, None).unwrap();
    let t = targets(&sys.mounts());
    let abs_inside = format!("{}/y", f.host.display()); // the link text, read inside the rootfs
    assert_eq!(t[2], "/host/x", "{t:?}");
    assert_eq!(t[3], abs_inside, "{t:?}");
    assert!(f.rootfs.join("host/x").is_dir());
    assert!(f.rootfs.join(abs_inside.trim_start_matches('/')).is_dir());
    assert!(!f.host.join("x").exists() && !f.host.join("y").exists());
}

#[test]
fn a_relative_destination_is_refused_before_any_mount() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({"mounts": [
        {"destination": "data", "type": "tmpfs", "source": "tmpfs"}
    ]}));
    let err = run_setup(&f, &sys, &s, None).unwrap_err();
    assert!(err.to_string().contains("not absolute"), "{err}");
    assert_eq!(
        sys.mounts().len(),
        2,
        "only the rootfs propagation and bind"
    );
}

#[test]
fn sysfs_and_mqueue_fall_back_to_the_agents_own_when_refused() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    sys.fail(
        |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs" || t == "mqueue"),
        Errno::EPERM,
    );
    let s = spec(serde_json::json!({"mounts": [
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"}
    ]}));
    run_setup(&f, &sys, &s, None).unwrap();
    let calls = sys.mounts();
    let rec_bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    assert_eq!(calls[3], mount(Some("/sys"), "/sys", None, rec_bind));
    assert_eq!(
        calls[5],
        mount(Some("/dev/mqueue"), "/dev/mqueue", None, rec_bind)
    );

    // Any other refusal is an error naming the mount.
    let sys = RecordingSyscall::new(&f.rootfs);
    sys.fail(
        |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "tmpfs"),
        Errno::EPERM,
    );
    let s = spec(serde_json::json!({"mounts": [
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}
    ]}));
    let err = run_setup(&f, &sys, &s, None).unwrap_err();
    assert!(err.to_string().contains("mount tmpfs on /run"), "{err}");
}

#[test]
fn cgroup_v1_is_a_tmpfs_of_hierarchies_read_only_when_asked() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    let style = CgroupMountStyle::V1(vec![
        ("cpu,cpuacct".into(), "cpu,cpuacct".into()),
        ("memory".into(), "memory".into()),
    ]);
    let extras = RootfsExtras {
        resolv_conf: None,
        cgroup_style: &style,
        terminal: false,
    };
    let s = spec(serde_json::json!({"mounts": [
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid"]}
    ]}));
    setup(&sys, &s, &f.rootfs, &extras, &mut |_| {}).unwrap();
    let calls = sys.mounts();
    let cg = "/sys/fs/cgroup";
    assert_eq!(
        calls[2..6],
        [
            with_data(
                mount(Some("tmpfs"), cg, Some("tmpfs"), MsFlags::MS_NOSUID),
                "mode=755"
            ),
            with_data(
                mount(
                    Some("cgroup"),
                    &format!("{cg}/cpu,cpuacct"),
                    Some("cgroup"),
                    MsFlags::MS_NOSUID | MsFlags::MS_RDONLY
                ),
                "cpu,cpuacct"
            ),
            with_data(
                mount(
                    Some("cgroup"),
                    &format!("{cg}/memory"),
                    Some("cgroup"),
                    MsFlags::MS_NOSUID | MsFlags::MS_RDONLY
                ),
                "memory"
            ),
            mount(
                None,
                cg,
                None,
                MsFlags::MS_NOSUID | BIND_REMOUNT_RO & !MsFlags::MS_BIND
            ),
        ],
        "{calls:#?}"
    );
    // A joint hierarchy gets one symlink per controller.
    let cpu = fs::read_link(f.rootfs.join("sys/fs/cgroup/cpu")).unwrap();
    assert_eq!(cpu, Path::new("cpu,cpuacct"));
}

#[test]
fn masked_and_read_only_paths_sysctls_and_a_read_only_root_after_pivot() {
    let f = fixture();
    fs::create_dir_all(f.rootfs.join("proc/acpi")).unwrap();
    fs::create_dir_all(f.rootfs.join("proc/sys")).unwrap();
    fs::write(f.rootfs.join("proc/kcore"), "").unwrap();
    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({
        "root": {"path": "rootfs", "readonly": true},
        "linux": {
            "maskedPaths": ["/proc/kcore", "/proc/acpi", "/proc/missing"],
            "readonlyPaths": ["/proc/sys", "/proc/missing-too"],
            "sysctl": {"net.ipv4.ip_forward": "1"}
        }
    }));
    // A missing read-only path is skipped like the kernel's ENOENT.
    sys.fail(
        |c| matches!(c, Call::Mount { target, .. } if target == "/proc/missing-too"),
        Errno::ENOENT,
    );
    run_setup(&f, &sys, &s, None).unwrap();
    let calls = sys.calls();
    let pivot = calls.iter().position(|c| *c == Call::PivotRoot).unwrap();
    assert_eq!(
        calls[pivot - 1..pivot + 4],
        [
            Call::Chdir("/".into()),
            Call::PivotRoot,
            mount(None, ".", None, MsFlags::MS_SLAVE | MsFlags::MS_REC),
            Call::Umount {
                target: ".".into(),
                flags: MntFlags::MNT_DETACH
            },
            Call::Chdir("/".into()),
        ]
    );
    let ro = BIND_REMOUNT_RO
        | MsFlags::MS_REC
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    let rec_bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    assert_eq!(
        calls[pivot + 4..],
        [
            // Sysctls before /proc/sys turns read-only (runc's order).
            Call::Sysctl {
                path: "/proc/sys/net/ipv4/ip_forward".into(),
                value: "1".into()
            },
            // A file is masked by /dev/null, a directory by an empty read-only tmpfs; a
            // path that does not exist is left alone.
            mount(Some("/dev/null"), "/proc/kcore", None, MsFlags::MS_BIND),
            with_data(
                mount(
                    Some("tmpfs"),
                    "/proc/acpi",
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                ),
                "size=0k"
            ),
            mount(Some("/proc/sys"), "/proc/sys", None, rec_bind),
            mount(Some("/proc/sys"), "/proc/sys", None, ro),
            mount(
                Some("/proc/missing-too"),
                "/proc/missing-too",
                None,
                rec_bind
            ),
            mount(None, "/", None, BIND_REMOUNT_RO),
        ],
        "{calls:#?}"
    );
}

#[test]
fn a_sysctl_name_that_leaves_proc_sys_is_refused() {
    let f = fixture();
    for key in ["../../etc/passwd", "/abs", ""] {
        let sys = RecordingSyscall::new(&f.rootfs);
        let mut sysctl = serde_json::Map::new();
        sysctl.insert(key.into(), "1".into());
        let s = spec(serde_json::json!({"linux": {"sysctl": sysctl}}));
        let err = run_setup(&f, &sys, &s, None).unwrap_err();
        assert!(err.to_string().contains("bad sysctl name"), "{key}: {err}");
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::Sysctl { .. })));
    }
}

#[test]
fn default_and_spec_devices_with_mode_owner_and_the_standard_links() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({
        "mounts": [{"destination": "/dev/pts", "type": "devpts", "source": "devpts"}],
        "linux": {"devices": [
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
             "fileMode": 384, "uid": 1000, "gid": 1001},
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438}
        ]}
    }));
    run_setup(&f, &sys, &s, None).unwrap();
    let nodes: Vec<Call> = sys
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Mknod { .. } | Call::Chown { .. }))
        .collect();
    let chr = |path: &str, perm, major, minor| Call::Mknod {
        path: path.into(),
        kind: SFlag::S_IFCHR,
        perm,
        major,
        minor,
    };
    assert_eq!(
        nodes,
        [
            // The spec's /dev/null replaces the default one.
            chr("/dev/zero", 0o666, 1, 5),
            chr("/dev/full", 0o666, 1, 7),
            chr("/dev/random", 0o666, 1, 8),
            chr("/dev/urandom", 0o666, 1, 9),
            chr("/dev/tty", 0o666, 5, 0),
            chr("/dev/fuse", 0o600, 10, 229),
            Call::Chown {
                path: "/dev/fuse".into(),
                uid: Some(1000),
                gid: Some(1001)
            },
            chr("/dev/null", 0o666, 1, 3),
            Call::Chown {
                path: "/dev/null".into(),
                uid: None,
                gid: None
            },
        ]
    );
    // The exact mode, whatever the umask.
    let mode = fs::metadata(f.rootfs.join("dev/fuse"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    let dev = f.rootfs.join("dev");
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        assert_eq!(fs::read_link(dev.join(name)).unwrap(), Path::new(target));
    }
}

#[test]
fn without_mknod_devices_are_bound_from_the_agents_dev_and_type_a_is_refused() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    sys.fail(|c| matches!(c, Call::Mknod { .. }), Errno::EPERM);
    run_setup(&f, &sys, &spec(serde_json::json!({})), None).unwrap();
    let binds: Vec<Call> = sys.mounts().into_iter().skip(2).collect();
    let names = ["null", "zero", "full", "random", "urandom", "tty"];
    assert_eq!(binds.len(), names.len() + 1, "{binds:#?}"); // + the pivot's
    for (call, name) in binds.iter().zip(names) {
        let p = format!("/dev/{name}");
        assert_eq!(*call, mount(Some(&p), &p, None, MsFlags::MS_BIND));
    }
    assert!(
        !f.rootfs.join("dev/ptmx").exists(),
        "no devpts, no ptmx link"
    );

    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({"linux": {"devices": [
        {"path": "/dev/all", "type": "a", "major": 0, "minor": 0}
    ]}}));
    let err = run_setup(&f, &sys, &s, None).unwrap_err();
    assert!(err.to_string().contains("type 'a' is not a node"), "{err}");
}

#[test]
fn the_sandbox_resolv_conf_is_bound_read_only_unless_the_spec_mounts_one() {
    let f = fixture();
    let resolv = f.host.join("resolv.conf");
    fs::write(&resolv, "nameserver 10.0.0.1\n").unwrap();
    let sys = RecordingSyscall::new(&f.rootfs);
    run_setup(&f, &sys, &spec(serde_json::json!({})), Some(&resolv)).unwrap();
    let src = resolv.display().to_string();
    assert_eq!(
        sys.mounts()[2..4],
        [
            mount(Some(&src), "/etc/resolv.conf", None, MsFlags::MS_BIND),
            mount(None, "/etc/resolv.conf", None, BIND_REMOUNT_RO),
        ]
    );
    assert!(f.rootfs.join("etc/resolv.conf").is_file());

    let sys = RecordingSyscall::new(&f.rootfs);
    let s = spec(serde_json::json!({"mounts": [
        {"destination": "/etc/resolv.conf", "type": "bind", "source": src, "options": ["rbind"]}
    ]}));
    run_setup(&f, &sys, &s, Some(&resolv)).unwrap();
    let t = targets(&sys.mounts());
    assert_eq!(t.iter().filter(|t| *t == "/etc/resolv.conf").count(), 1);
}

fn init(spec: Spec, new: Vec<NsKind>, join: Vec<(NsKind, PathBuf)>) -> InitConfig {
    InitConfig {
        spec,
        rootfs: PathBuf::from("/nonexistent"),
        resolv_conf: None,
        cgroup_style: v2(),
        new_namespaces: new,
        join_namespaces: join,
        builtin_pause: false,
    }
}

#[test]
fn namespaces_are_joined_by_path_then_created_in_one_unshare() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    let net = PathBuf::from("/proc/self/ns/net");
    let cfg = init(
        spec(serde_json::json!({"hostname": "web-0"})),
        vec![NsKind::Mount, NsKind::Uts, NsKind::Ipc],
        vec![(NsKind::Net, net.clone())],
    );
    enter_namespaces(&sys, &cfg).unwrap();
    let calls = sys.calls();
    let own_net = fs::read_link(&net).unwrap().display().to_string();
    assert_eq!(
        calls,
        [
            Call::Setns {
                nstype: CloneFlags::CLONE_NEWNET,
                file: own_net
            },
            Call::Unshare(
                CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC
            ),
            Call::Sethostname("web-0".into()),
        ]
    );

    // Without a UTS namespace of its own the hostname is the agent's: never set. Nothing
    // new: no unshare.
    let sys = RecordingSyscall::new(&f.rootfs);
    let cfg = init(
        spec(serde_json::json!({"hostname": "web-0"})),
        vec![],
        vec![],
    );
    enter_namespaces(&sys, &cfg).unwrap();
    assert!(sys.calls().is_empty(), "{:?}", sys.calls());

    // A joined UTS namespace takes the hostname.
    let sys = RecordingSyscall::new(&f.rootfs);
    let cfg = init(
        spec(serde_json::json!({"hostname": "web-0"})),
        vec![],
        vec![(NsKind::Uts, PathBuf::from("/proc/self/ns/uts"))],
    );
    enter_namespaces(&sys, &cfg).unwrap();
    assert_eq!(sys.calls()[1], Call::Sethostname("web-0".into()));

    // A namespace path that cannot be opened is an error naming it; nothing is joined.
    let sys = RecordingSyscall::new(&f.rootfs);
    let cfg = init(
        spec(serde_json::json!({})),
        vec![NsKind::Mount],
        vec![(NsKind::Net, PathBuf::from("/proc/self/ns/nope"))],
    );
    let err = enter_namespaces(&sys, &cfg).unwrap_err();
    assert!(err.to_string().contains("/proc/self/ns/nope"), "{err}");
    assert!(sys.calls().is_empty());
}

fn storage(driver: &str, source: &str, options: &[&str], at: &Path) -> StorageSpec {
    StorageSpec {
        driver: driver.into(),
        source: source.into(),
        fstype: String::new(),
        options: options.iter().map(|o| o.to_string()).collect(),
        mount_point: at.display().to_string(),
    }
}

#[test]
fn storages_mount_in_order_and_a_failure_unmounts_what_the_request_mounted() {
    let f = fixture();
    let sys = RecordingSyscall::new(&f.rootfs);
    let shared = f.host.join("shared");
    let vol = f.host.join("vol");
    let src = f.host.join("src");
    fs::create_dir_all(&src).unwrap();
    let specs = [
        storage("virtiofs", "vessel", &["ro"], &shared),
        storage("bind", &src.display().to_string(), &["ro"], &vol),
    ];
    let mounted = mount_storages(&sys, &specs).unwrap();
    assert_eq!(mounted.len(), 2);
    let (shared_s, vol_s, src_s) = (
        shared.display().to_string(),
        vol.display().to_string(),
        src.display().to_string(),
    );
    assert_eq!(
        sys.calls(),
        [
            mount(
                Some("vessel"),
                &shared_s,
                Some("virtiofs"),
                MsFlags::MS_RDONLY
            ),
            mount(
                Some(&src_s),
                &vol_s,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC
            ),
            mount(None, &vol_s, None, BIND_REMOUNT_RO),
        ]
    );

    // The third storage fails: the two this request mounted come off, last first.
    let sys = RecordingSyscall::new(&f.rootfs);
    let bad = f.host.join("bad");
    sys.fail(
        move |c| matches!(c, Call::Mount { target, .. } if *target == bad.display().to_string()),
        Errno::EINVAL,
    );
    let specs = [
        specs[0].clone(),
        specs[1].clone(),
        storage("tmpfs", "", &[], &f.host.join("bad")),
    ];
    let err = mount_storages(&sys, &specs).unwrap_err();
    assert!(err.to_string().contains("tmpfs storage"), "{err}");
    let unmounts: Vec<Call> = sys
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Umount { .. }))
        .collect();
    assert_eq!(
        unmounts,
        [
            Call::Umount {
                target: vol_s.clone(),
                flags: MntFlags::empty()
            },
            Call::Umount {
                target: shared_s.clone(),
                flags: MntFlags::empty()
            },
        ]
    );

    // Bad requests are refused before anything is mounted.
    for bad in [
        storage("tmpfs", "", &[], Path::new("relative")),
        storage("tmpfs", "", &[], Path::new("/a/../b")),
        storage("nfs", "x", &[], &shared),
        storage("blk", "/dev/vdb", &[], &shared),
    ] {
        let sys = RecordingSyscall::new(&f.rootfs);
        assert!(mount_storages(&sys, &[bad]).is_err());
        assert!(sys.calls().is_empty());
    }
}
