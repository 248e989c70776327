use super::*;

/// A [`SnapshotDriver`] for scripts standing in for the VMM: no agent to check, so it tells
/// the "VMM" at once and waits for it to exit (the real driver is exercised by the VM tests).
pub(crate) fn tell_at_once(
    child: &mut Child,
    _uds: &Path,
    deadline: Instant,
    _grace: Duration,
) -> Result<(AgentReady, ExitStatus), ReadyError> {
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{}", vessel_protocol::vmm_launch::SNAPSHOT_NOW).map_err(ReadyError::Tell)?;
    drop(stdin);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(ReadyError::Wait)? {
            let ready = AgentReady {
                waited: Duration::ZERO,
                guest_uptime_ms: 0,
                version: "script".into(),
            };
            return Ok((ready, status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(ReadyError::SnapshotTimeout(Duration::ZERO))
}

/// A config whose VMM, kernel and initrd are files in `dir`.
fn config_in(dir: &Path) -> Config {
    let mut config = Config::default();
    for (name, field) in [("vessel-vmm", 0), ("vmlinux", 1), ("initrd.cpio", 2)] {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        match field {
            0 => config.hypervisor.path = p,
            1 => config.hypervisor.kernel = p,
            _ => config.hypervisor.initrd = p,
        }
    }
    config.snapshot.dir = dir.join("snapshots");
    config
}

/// The real tool's process handling, with a script in place of the VMM.
#[test]
fn vmm_tool_maps_exit_statuses_and_passes_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    let script = dir.path().join("fake-vmm");
    let args_file = dir.path().join("args");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\ncase \"$1\" in\n\
             snapshot-check) case \"$3\" in *good) exit 0;; *stale) echo 'snapshot rejected: stale' >&2; exit 6;; *) echo boom >&2; exit 1;; esac;;\n\
             snapshot-create) read line; [ \"$line\" = snapshot ] || exit 3; mkdir -p \"$3\" && echo '{{}}' > \"$3/vm.json\"; exit 0;;\n\
             esac\nexit 9\n",
            args_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config.hypervisor.path = script;
    config.hypervisor.seccomp = false;
    let t = VmmSnapshotTool::with_driver(tell_at_once);
    assert_eq!(
        t.check(&config, Path::new("/x/good")),
        Ok(CheckOutcome::Usable)
    );
    assert_eq!(
        t.check(&config, Path::new("/x/stale")),
        Ok(CheckOutcome::Rejected("snapshot rejected: stale".into()))
    );
    assert!(t
        .check(&config, Path::new("/x/bad"))
        .unwrap_err()
        .contains("boom"));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    t.create(
        &config,
        &work,
        &work.join("snap"),
        Instant::now() + Duration::from_secs(30),
    )
    .unwrap();
    assert!(work.join("snap/vm.json").is_file());
    let args = std::fs::read_to_string(&args_file).unwrap();
    let create = args.lines().last().unwrap();
    for want in [
        "snapshot-create --snapshot-dir",
        "--kernel",
        "--mem-mib 128 --vcpus 1",
        "--vsock-uds",
        "--shared-dir vessel=",
        "--no-seccomp",
    ] {
        assert!(create.contains(want), "{want:?} not in {create:?}");
    }
}
