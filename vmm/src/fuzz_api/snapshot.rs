//! `vm.json` text through [`Manifest::parse`] (versions, serde, hex-encoded KVM structs,
//! consistency checks), then what a restore does with it before KVM is involved: the
//! expectations check, the memory layout check, the boot entry, the serial UART's state, and
//! each virtio device's state restored into a fresh transport over a real device of that
//! type, which then runs a few event-loop rounds with every queue notified. Input that is not
//! a manifest is also tried as one device state (`VirtioSnapshot`), a shorter way for the
//! fuzzer into the transport's restore.
//!
//! Checks beyond "no panic": a device state that restores saves back the same (the device's
//! own extra state aside).

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::input::Enc;
use super::{guest_memory, lock, ScratchDir};
use crate::arch::regs::BootEntry;
use crate::devices::bus::BusDevice;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::device::{GuestMemory, VirtioDevice};
use crate::devices::virtio::fs::{Fs, VIRTIO_ID_FS};
use crate::devices::virtio::mmio::{MmioTransport, VirtioSnapshot};
use crate::devices::virtio::vsock::Vsock;
use crate::snapshot::format::RestoreExpectations;
use crate::snapshot::memory::check_memory_file;
use crate::snapshot::Manifest;

/// Guest memory the restored devices get (queue addresses beyond it are refused).
const MEM_SIZE: usize = 1 << 20;
/// The vsock CID of the devices the states are restored into.
pub const GUEST_CID: u64 = 3;

/// What a run reached (for tests of the harness and the seeds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub parsed: bool,
    pub serial_restored: bool,
    /// Device states restored (from a manifest or alone).
    pub devices_restored: u32,
    pub devices_refused: u32,
}

/// Runs one input (any bytes).
pub fn run(data: &[u8]) -> Summary {
    let mut summary = Summary::default();
    let text = String::from_utf8_lossy(data);
    let dir = ScratchDir::new("snap");
    match Manifest::parse(&text, &dir.path().join("vm.json")) {
        Ok(m) => {
            summary.parsed = true;
            restore_checks(&m, &dir, &mut summary);
        }
        Err(e) => {
            let _ = (e.to_string(), e.is_rejected_snapshot());
            if let Ok(state) = serde_json::from_str::<VirtioSnapshot>(&text) {
                restore_device(&state, &dir, 0, &mut summary);
            }
        }
    }
    summary
}

fn restore_checks(m: &Manifest, dir: &ScratchDir, summary: &mut Summary) {
    let b = &m.boot;
    let expect = RestoreExpectations {
        mem_mib: Some(b.mem_mib),
        vcpus: Some(b.vcpus),
        cmdline_extra: Some(b.cmdline_extra.clone()),
        vsock_cid: b.vsock_cid,
        ..RestoreExpectations::default()
    };
    if let Err(e) = m.check(&expect) {
        panic!("a manifest does not match its own values: {e}");
    }
    let _ = m.check(&RestoreExpectations {
        mem_mib: Some(b.mem_mib.wrapping_add(1)),
        vsock_cid: Some(GUEST_CID),
        initrd: Some(None),
        ..RestoreExpectations::default()
    });
    // No memory file here: the layout is checked before the file is opened.
    let _ = check_memory_file(&m.memory_path(dir.path()), m.memory.size, &m.memory.regions);
    let _ = b.boot_entry.parse::<BootEntry>();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    if let Ok(mut serial) = SerialDevice::restore(irq, Box::new(std::io::sink()), &m.serial) {
        summary.serial_restored = true;
        // The guest goes on using the UART.
        let mut b = [0u8; 1];
        for off in 0..8 {
            serial.read(off, &mut b);
        }
        serial.write(0, b"x");
        let _ = serial.save_state();
    }
    for (n, state) in m.virtio.iter().enumerate() {
        restore_device(state, dir, n, summary);
    }
}

fn restore_device(state: &VirtioSnapshot, dir: &ScratchDir, n: usize, summary: &mut Summary) {
    let mem = guest_memory(MEM_SIZE);
    if state.device_type == VIRTIO_ID_FS {
        let shared = dir.path().join("shared");
        let _ = std::fs::create_dir(&shared);
        let dev = Fs::new("vessel", &shared, false).expect("virtio-fs device");
        restore_into(dev, state, mem, summary);
    } else {
        let dev = Vsock::new(GUEST_CID, dir.path().join(format!("v{n}.sock"))).expect("vsock");
        restore_into(dev, state, mem, summary);
    }
}

fn restore_into<T>(dev: T, state: &VirtioSnapshot, mem: GuestMemory, summary: &mut Summary)
where
    T: VirtioDevice + MutEventSubscriber + 'static,
{
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<T>>>::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let mut t = MmioTransport::new(dev.clone(), mem);
    match t.restore_state(state) {
        Ok(_pending) => summary.devices_restored += 1,
        Err(_) => {
            summary.devices_refused += 1;
            return;
        }
    }
    let mut back = t.save_state();
    back.device = state.device.clone();
    assert_eq!(&back, state, "a restored device saves back something else");
    // The restored device runs: hostile ring indices meet the queues here.
    let queues = lock(&dev).queue_events().len();
    for q in 0..queues {
        let _ = lock(&dev).queue_events()[q].write(1);
    }
    for _ in 0..3 {
        em.run_with_timeout(0).expect("event loop");
    }
}

/// The committed seeds: (file name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let m = seed_manifest();
    let text = serde_json::to_string(&m).expect("manifest json");
    let vsock = serde_json::to_string(&m.virtio[0]).expect("state json");
    let mut hostile = m.virtio[0].clone();
    hostile.queues[1].next_avail = 1000;
    hostile.queues[1].next_used = 7;
    hostile.irq_status = u32::MAX;
    let hostile = serde_json::to_string(&hostile).expect("state json");
    let fs = serde_json::to_string(&m.virtio[1]).expect("state json");
    let versions = Enc::new()
        .bytes(br#"{"format_version":2,"vmm_version":"0.1.0","boot":{}}"#)
        .finish();
    vec![
        ("manifest", text.into_bytes()),
        ("vsock-state", vsock.into_bytes()),
        ("vsock-hostile-indices", hostile.into_bytes()),
        ("fs-state", fs.into_bytes()),
        ("future-version", versions),
    ]
}

/// A manifest as a 32 MiB, 1-vCPU VM with an active vsock device and a configured (not yet
/// active) virtio-fs device would have it saved.
fn seed_manifest() -> Manifest {
    use crate::snapshot::format::{BootRecord, FileIdentity, MemoryRecord, SlotRecord};
    use crate::snapshot::raw::Raw;
    use crate::snapshot::{VcpuState, VmState};
    use kvm_bindings::{
        kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state,
        kvm_mp_state, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    };

    let dir = ScratchDir::new("snap-seed");
    let mem = guest_memory(MEM_SIZE);
    let drive = |t: &mut MmioTransport, queues: u32, driver_ok: bool| {
        use crate::devices::virtio::mmio::*;
        let mut w = |off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(REG_STATUS, STATUS_ACKNOWLEDGE);
        w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(REG_DRIVER_FEATURES_SEL, 1);
        w(REG_DRIVER_FEATURES, 1);
        w(
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for q in 0..queues {
            let base = 0x1_0000 * u64::from(q + 1);
            w(REG_QUEUE_SEL, q);
            w(REG_QUEUE_NUM, 64);
            w(REG_QUEUE_DESC_LOW, base as u32);
            w(REG_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
            w(REG_QUEUE_USED_LOW, (base + 0x2000) as u32);
            w(REG_QUEUE_READY, 1);
        }
        if driver_ok {
            w(
                REG_STATUS,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
        }
    };
    let vsock = Vsock::new(GUEST_CID, dir.path().join("v.sock")).expect("vsock");
    let mut t = MmioTransport::new(Arc::new(Mutex::new(vsock)), mem.clone());
    drive(&mut t, 3, true);
    let vsock_state = t.save_state();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    let fs = Fs::new("vessel", &shared, false).expect("virtio-fs");
    let mut t = MmioTransport::new(Arc::new(Mutex::new(fs)), mem);
    drive(&mut t, 2, false);
    let fs_state = t.save_state();

    let mem_mib = 32;
    let file = |p: &str, size| FileIdentity {
        path: p.into(),
        size,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
    };
    Manifest {
        format_version: crate::snapshot::format::FORMAT_VERSION,
        vmm_version: crate::snapshot::format::VMM_VERSION.to_string(),
        created_unix_ms: 1,
        boot: BootRecord {
            kernel: file("/usr/local/share/vessel/vmlinux", 9_000_000),
            initrd: Some(file("/usr/local/share/vessel/initrd.cpio", 3_000_000)),
            cmdline_extra: String::new(),
            cmdline: "console=ttyS0 reboot=k panic=-1".into(),
            mem_mib,
            vcpus: 1,
            boot_entry: "linux64".into(),
            host_kind: "kvm-pvm".into(),
            removed_cpu_features: vec!["avx".into()],
            vsock_cid: Some(GUEST_CID),
        },
        memory: MemoryRecord {
            file: crate::snapshot::MEMORY_FILE.into(),
            size: u64::from(mem_mib) << 20,
            regions: crate::snapshot::memory::layout(u64::from(mem_mib) << 20),
            data_bytes: 4096,
        },
        vm: VmState {
            pic_master: Raw(kvm_irqchip::default()),
            pic_slave: Raw(kvm_irqchip::default()),
            ioapic: Raw(kvm_irqchip::default()),
            pit: Raw(kvm_pit_state2::default()),
            clock: Raw(kvm_clock_data::default()),
        },
        vcpus: vec![VcpuState {
            index: 0,
            cpuid: vec![Raw(kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            })],
            mp_state: Raw(kvm_mp_state::default()),
            regs: Raw(kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                ..Default::default()
            }),
            sregs: Raw(kvm_sregs::default()),
            xsave: Raw([0u32; 1024]),
            xcrs: Raw(kvm_xcrs::default()),
            debugregs: Raw(kvm_debugregs::default()),
            lapic: Raw(kvm_lapic_state::default()),
            msrs: Vec::new(),
            vcpu_events: Raw(kvm_vcpu_events::default()),
            tsc_khz: Some(2_000_000),
        }],
        serial: SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            Box::new(std::io::sink()),
        )
        .save_state(),
        virtio_slots: vec![
            SlotRecord {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            SlotRecord {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ],
        virtio: vec![vsock_state, fs_state],
    }
}
