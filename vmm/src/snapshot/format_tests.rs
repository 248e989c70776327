use super::*;
use crate::devices::virtio::mmio::{QueueSnapshot, RingConfigSnapshot};
use crate::snapshot::cpu::MsrValue;
use crate::snapshot::raw::Raw;
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
};

fn vcpu(index: u8) -> VcpuState {
    VcpuState {
        index,
        cpuid: vec![Raw(kvm_cpuid_entry2 {
            function: 1,
            eax: 0x806f8,
            ..Default::default()
        })],
        mp_state: Raw(kvm_mp_state::default()),
        regs: Raw(kvm_regs {
            rip: 0xffff_ffff_8100_0000 + u64::from(index),
            ..Default::default()
        }),
        sregs: Raw(kvm_sregs::default()),
        xsave: Raw([7u32; 1024]),
        xcrs: Raw(kvm_xcrs::default()),
        debugregs: Raw(kvm_debugregs::default()),
        lapic: Raw(kvm_lapic_state::default()),
        msrs: vec![MsrValue {
            index: 0x10,
            data: 12345,
        }],
        vcpu_events: Raw(kvm_vcpu_events::default()),
        tsc_khz: Some(2_000_000),
    }
}

/// A manifest as `RunningVm::snapshot` would write it for a 64 MiB, 2-vCPU VM with one
/// virtio device.
pub(crate) fn sample(kernel: &Path) -> Manifest {
    let mem_mib = 64;
    Manifest {
        format_version: FORMAT_VERSION,
        vmm_version: VMM_VERSION.to_string(),
        created_unix_ms: 1,
        boot: BootRecord {
            kernel: FileIdentity::of(kernel).expect("kernel"),
            initrd: None,
            cmdline_extra: "quiet".into(),
            cmdline: "console=ttyS0 quiet".into(),
            mem_mib,
            vcpus: 2,
            boot_entry: "linux64".into(),
            host_kind: "kvm-pvm".into(),
            removed_cpu_features: vec!["popcnt".into()],
            vsock_cid: Some(3),
        },
        memory: MemoryRecord {
            file: MEMORY_FILE.into(),
            size: u64::from(mem_mib) << 20,
            regions: crate::snapshot::memory::layout(u64::from(mem_mib) << 20),
            data_bytes: 4096,
        },
        vm: VmState {
            pic_master: Raw(kvm_irqchip::default()),
            pic_slave: Raw(kvm_irqchip::default()),
            ioapic: Raw(kvm_irqchip::default()),
            pit: Raw(kvm_pit_state2::default()),
            clock: Raw(kvm_clock_data {
                clock: 42,
                ..Default::default()
            }),
        },
        vcpus: vec![vcpu(0), vcpu(1)],
        serial: SerialSnapshot {
            baud_divisor_low: 12,
            baud_divisor_high: 0,
            interrupt_enable: 0,
            interrupt_identification: 1,
            line_control: 3,
            line_status: 0x60,
            modem_control: 8,
            modem_status: 0xb0,
            scratch: 0,
            in_buffer: vec![b'x'],
        },
        virtio_slots: vec![SlotRecord {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }],
        virtio: vec![VirtioSnapshot {
            device_type: 19,
            config_space: vec![3, 0, 0, 0, 0, 0, 0, 0],
            acked_features: 1 << 32,
            activated: true,
            irq_status: 1,
            status: 0xf,
            device_features_sel: 1,
            driver_features_sel: 1,
            queue_sel: 2,
            config_generation: 0,
            ring_configs: vec![RingConfigSnapshot {
                size: 128,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
            }],
            queues: vec![QueueSnapshot {
                max_size: 256,
                size: 128,
                ready: true,
                desc_table: 0x1000,
                avail_ring: 0x2000,
                used_ring: 0x3000,
                next_avail: 17,
                next_used: 16,
                event_idx: false,
            }],
            device: Some(crate::devices::virtio::device::DeviceState::Vsock {
                local_port_last: 1073741825,
                parked: Vec::new(),
            }),
        }],
    }
}

fn kernel() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, b"\x7fELF kernel").expect("write");
    (dir, k)
}

#[test]
fn manifest_round_trips_through_json() {
    let (_d, k) = kernel();
    let m = sample(&k);
    let text = serde_json::to_string(&m).expect("ser");
    let back = Manifest::parse(&text, Path::new("vm.json")).expect("parse");
    assert_eq!(back, m);
    assert_eq!(back.vcpus[1].regs.0.rip, 0xffff_ffff_8100_0001);
    assert_eq!(back.vcpus[0].xsave.0[1023], 7);
    assert_eq!(back.vm.clock.0.clock, 42);
}

#[test]
fn load_reads_the_directory_and_bounds_the_file() {
    let (d, k) = kernel();
    let m = sample(&k);
    std::fs::write(
        d.path().join(MANIFEST_FILE),
        serde_json::to_vec(&m).expect("ser"),
    )
    .expect("write");
    assert_eq!(Manifest::load(d.path()).expect("load"), m);
    std::fs::File::create(d.path().join(MANIFEST_FILE))
        .expect("create")
        .set_len(MAX_MANIFEST_BYTES + 1)
        .expect("len");
    assert!(matches!(
        Manifest::load(d.path()),
        Err(SnapshotError::ManifestTooLarge { .. })
    ));
    let empty = tempfile::tempdir().expect("tmp");
    assert!(matches!(
        Manifest::load(empty.path()),
        Err(SnapshotError::Read { .. })
    ));
}

#[test]
fn versions_are_checked_before_anything_else() {
    let (_d, k) = kernel();
    let mut v = serde_json::to_value(sample(&k)).expect("ser");
    v["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
    // An unknown future field elsewhere must not hide the version error.
    v["vcpus"] = serde_json::json!("changed in version 2");
    let err = Manifest::parse(&v.to_string(), Path::new("vm.json")).expect_err("version");
    assert!(matches!(err, SnapshotError::FormatVersion { .. }), "{err}");
    assert!(err.is_rejected_snapshot());

    let mut v = serde_json::to_value(sample(&k)).expect("ser");
    v["vmm_version"] = serde_json::json!("0.0.1-other");
    let err = Manifest::parse(&v.to_string(), Path::new("vm.json")).expect_err("vmm");
    assert!(err.to_string().contains("vessel-vmm 0.0.1-other"), "{err}");
}

#[test]
fn truncated_or_garbage_json_is_a_corrupt_error() {
    let (_d, k) = kernel();
    let text = serde_json::to_string(&sample(&k)).expect("ser");
    for bad in [
        &text[..text.len() / 2],
        &text[..text.len() - 1],
        "",
        "null",
        "{\"format_version\": 1}",
        "\u{0}\u{1}binary",
    ] {
        let err = Manifest::parse(bad, Path::new("/s/vm.json")).expect_err("corrupt");
        assert!(
            matches!(err, SnapshotError::Corrupt { .. }),
            "{bad:.40?}: {err}"
        );
        assert!(err.to_string().contains("/s/vm.json"), "{err}");
    }
    // A KVM struct of the wrong length (e.g. damaged registers) is not zero-padded.
    let mut v = serde_json::to_value(sample(&k)).expect("ser");
    v["vcpus"][0]["regs"] = serde_json::json!("00ff");
    let err = Manifest::parse(&v.to_string(), Path::new("vm.json")).expect_err("regs");
    let err = vessel_protocol::errors::chain(&err);
    assert!(err.contains("kvm_regs"), "{err}");
}

#[test]
fn inconsistent_manifests_are_refused() {
    let (_d, k) = kernel();
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("vCPU states", Box::new(|m| m.vcpus.truncate(1))),
        ("vCPU state 1", Box::new(|m| m.vcpus[1].index = 0)),
        ("MiB of memory", Box::new(|m| m.boot.mem_mib = 1)),
        ("vCPUs", Box::new(|m| m.boot.vcpus = 0)),
        ("memory of", Box::new(|m| m.memory.size += 4096)),
        (
            "memory file",
            Box::new(|m| m.memory.file = "../../etc/passwd".into()),
        ),
        ("slots", Box::new(|m| m.virtio_slots.clear())),
    ];
    for (what, edit) in cases {
        let mut m = sample(&k);
        edit(&mut m);
        let text = serde_json::to_string(&m).expect("ser");
        let err = Manifest::parse(&text, Path::new("vm.json")).expect_err(what);
        assert!(
            matches!(err, SnapshotError::Inconsistent(_)) && err.to_string().contains(what),
            "{what}: {err}"
        );
    }
}

#[test]
fn expectations_name_what_differs() {
    let (d, k) = kernel();
    let m = sample(&k);
    assert!(m.check(&RestoreExpectations::default()).is_ok());
    let ok = RestoreExpectations {
        mem_mib: Some(64),
        vcpus: Some(2),
        kernel: Some(k.clone()),
        initrd: Some(None),
        cmdline_extra: Some("quiet".into()),
        vsock_cid: Some(3),
    };
    assert!(m.check(&ok).is_ok());
    let fails = |e: RestoreExpectations, what: &str| {
        let err = m.check(&e).expect_err(what);
        assert!(
            matches!(&err, SnapshotError::Mismatch { what: w, .. } if w.contains(what)),
            "{what}: {err}"
        );
    };
    fails(
        RestoreExpectations {
            vcpus: Some(1),
            ..ok.clone()
        },
        "vCPUs",
    );
    fails(
        RestoreExpectations {
            cmdline_extra: Some(String::new()),
            ..ok.clone()
        },
        "command line",
    );
    fails(
        RestoreExpectations {
            initrd: Some(Some(k.clone())),
            ..ok.clone()
        },
        "initrd",
    );
    fails(
        RestoreExpectations {
            vsock_cid: Some(4),
            ..ok.clone()
        },
        "CID",
    );
    fails(
        RestoreExpectations {
            kernel: Some(d.path().join("other")),
            ..ok.clone()
        },
        "kernel",
    );
    // The same kernel path, rewritten since the snapshot: stale.
    std::fs::write(&k, b"\x7fELF a different, longer kernel").expect("rewrite");
    fails(ok, "kernel");
}

/// Damage anywhere in the file is an error or a still-consistent manifest, never a panic.
#[test]
fn damaged_bytes_never_panic() {
    let (_d, k) = kernel();
    let text = serde_json::to_string(&sample(&k)).expect("ser");
    let bytes = text.as_bytes();
    let step = (bytes.len() / 700).max(1);
    let mut errors = 0;
    for (i, replacement) in (0..bytes.len())
        .step_by(step)
        .zip([b'9', b'"', b'}', b'x', b'-'].iter().cycle())
    {
        let mut damaged = bytes.to_vec();
        damaged[i] = *replacement;
        let damaged = String::from_utf8_lossy(&damaged);
        if Manifest::parse(&damaged, Path::new("vm.json")).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
}
