//! Snapshot/restore with a tiny hand-assembled guest: a counter in guest memory, printed in
//! hex to the serial port in a loop. Snapshotting mid-run and restoring into a new VM must
//! continue the output exactly where it stopped (not from 0, no character lost or repeated),
//! which proves registers, memory and the pending port I/O were all restored.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vessel_protocol::errors::chain;

use common::{require_kvm, TestGuest};
use vessel_vmm::snapshot::{
    Manifest, RestoreConfig, RestoreExpectations, SnapshotError, SnapshotOptions, MANIFEST_FILE,
    MEMORY_FILE,
};
use vessel_vmm::{BootEntry, ConsoleConfig, ExitReason, RunningVm, Vm, VmConfig, VmmError};

/// Long mode, entered through the linux64 path:
/// ```text
///     mov dx, 0x3f8
///     mov ebx, 0x200000          ; the counter lives at 2 MiB
/// 1:  mov rax, [rbx] ; inc rax ; mov [rbx], rax
///     mov edi, eax ; mov ecx, 8
/// 2:  rol edi, 4 ; mov eax, edi ; and eax, 0xf
///     cmp eax, 10 ; jb 3f ; add eax, 39
/// 3:  add eax, 48 ; out dx, al   ; one hex digit
///     dec ecx ; jnz 2b
///     mov al, 10 ; out dx, al
///     mov ecx, 20000
/// 4:  dec ecx ; jnz 4b           ; a short pause
///     jmp 1b
/// ```
const COUNTER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xbb, 0x00, 0x00, 0x20, 0x00, 0x48, 0x8b, 0x03, 0x48, 0xff, 0xc0, 0x48,
    0x89, 0x03, 0x89, 0xc7, 0xb9, 0x08, 0x00, 0x00, 0x00, 0xc1, 0xc7, 0x04, 0x89, 0xf8, 0x83, 0xe0,
    0x0f, 0x83, 0xf8, 0x0a, 0x72, 0x03, 0x83, 0xc0, 0x27, 0x83, 0xc0, 0x30, 0xee, 0xff, 0xc9, 0x75,
    0xe8, 0xb0, 0x0a, 0xee, 0xb9, 0x20, 0x4e, 0x00, 0x00, 0xff, 0xc9, 0x75, 0xfc, 0xeb, 0xca,
];

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until `path` holds at least `lines` complete lines.
fn wait_lines(path: &Path, lines: usize, vm: &mut RunningVm) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(path).matches('\n').count() < lines {
        if let Some(reason) = vm.wait_timeout(Duration::from_millis(20)) {
            panic!("guest stopped ({reason}); console: {:?}", read(path));
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {lines} lines in 60 s: {:?}",
            read(path)
        );
    }
}

/// Checks `text` is the counter sequence `first, first+1, ...` (last line may be partial).
fn assert_consecutive(text: &str, first: u64) -> u64 {
    let mut expect = first;
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            // Unfinished last line: a prefix of the next value.
            assert!(
                format!("{expect:08x}").starts_with(line),
                "partial line {line:?} is not a prefix of {expect:08x} in {text:?}"
            );
            break;
        }
        let value = u64::from_str_radix(line, 16)
            .unwrap_or_else(|e| panic!("line {line:?} is not hex ({e}) in {text:?}"));
        assert_eq!(value, expect, "counter sequence broken in {text:?}");
        expect += 1;
    }
    expect - 1
}

fn host_config(console: PathBuf) -> VmConfig {
    let mut c = VmConfig::with_kernel("/nonexistent-kernel-not-needed-to-restore");
    c.console = ConsoleConfig::File(console);
    c
}

fn restore(dir: &Path, console: PathBuf) -> Result<RunningVm, VmmError> {
    Vm::restore(RestoreConfig {
        snapshot_dir: dir.to_path_buf(),
        host: host_config(console),
        expect: RestoreExpectations::default(),
    })
}

/// Boots the counter guest, lets it print a few lines, snapshots it into `<tmp>/snap`.
fn counter_snapshot(g: &TestGuest) -> PathBuf {
    counter_snapshot_with(g, 1)
}

fn counter_snapshot_with(g: &TestGuest, vcpus: u8) -> PathBuf {
    require_kvm();
    let mut config = g.config(BootEntry::Linux64);
    config.vcpus = vcpus;
    let mut vm = Vm::start_with_devices(config, vec![]).expect("VM starts");
    wait_lines(&g.console, 5, &mut vm);
    let dir = g.dir.path().join("snap");
    let summary = vm
        .snapshot(&dir, &SnapshotOptions::default())
        .expect("snapshot");
    assert_eq!(summary.mem_bytes, 64 << 20);
    // Code page, page tables, zero page, counter...: a few pages, not 64 MiB.
    assert!(
        summary.memory_data_bytes < 1 << 20,
        "{} bytes of non-zero memory",
        summary.memory_data_bytes
    );
    dir
}

#[test]
fn restored_guest_continues_its_counter_exactly() {
    let g = TestGuest::new(COUNTER, false);
    let dir = counter_snapshot(&g);
    let before = read(&g.console);
    let last_before = assert_consecutive(&before, 1);
    assert!(last_before >= 5, "{before:?}");
    assert!(dir.join(MANIFEST_FILE).is_file() && dir.join(MEMORY_FILE).is_file());

    let console = g.dir.path().join("restored.log");
    let mut vm = restore(&dir, console.clone()).expect("restore");
    wait_lines(&console, 5, &mut vm);
    assert_eq!(vm.stop(), ExitReason::Stopped);
    let after = read(&console);
    // The restored output continues the interrupted one: together they are one sequence.
    let last = assert_consecutive(&format!("{before}{after}"), 1);
    assert!(last >= last_before + 4, "before {before:?} after {after:?}");
}

/// vCPU 1 never got a SIPI: its "waiting for INIT/SIPI" state is saved and restored as is
/// (and it keeps waiting) while vCPU 0 continues the counter.
#[test]
fn two_vcpu_vm_restores_with_its_idle_application_processor() {
    let g = TestGuest::new(COUNTER, false);
    let dir = counter_snapshot_with(&g, 2);
    let m = Manifest::load(&dir).expect("manifest");
    assert_eq!(m.vcpus.len(), 2);
    assert_ne!(
        m.vcpus[0].regs.0.rip, m.vcpus[1].regs.0.rip,
        "the two vCPUs are saved separately"
    );
    let before = read(&g.console);
    let console = g.dir.path().join("restored.log");
    let mut vm = restore(&dir, console.clone()).expect("restore");
    wait_lines(&console, 3, &mut vm);
    assert_eq!(vm.stop(), ExitReason::Stopped);
    assert_consecutive(&format!("{before}{}", read(&console)), 1);
}

#[test]
fn one_snapshot_restores_into_two_vms_at_once() {
    let g = TestGuest::new(COUNTER, false);
    let dir = counter_snapshot(&g);
    let before = read(&g.console);
    let c1 = g.dir.path().join("r1.log");
    let c2 = g.dir.path().join("r2.log");
    let mut a = restore(&dir, c1.clone()).expect("restore 1");
    let mut b = restore(&dir, c2.clone()).expect("restore 2");
    wait_lines(&c1, 3, &mut a);
    wait_lines(&c2, 3, &mut b);
    assert_eq!(a.stop(), ExitReason::Stopped);
    assert_eq!(b.stop(), ExitReason::Stopped);
    // Both continue from the same point; neither sees the other's writes (private COW).
    assert_consecutive(&format!("{before}{}", read(&c1)), 1);
    assert_consecutive(&format!("{before}{}", read(&c2)), 1);
}

#[test]
fn damaged_or_mismatched_snapshots_are_refused_with_typed_errors() {
    let g = TestGuest::new(COUNTER, false);
    let dir = counter_snapshot(&g);
    let console = g.dir.path().join("x.log");
    let snapshot_err = |r: Result<RunningVm, VmmError>| match r {
        Err(VmmError::Snapshot(e)) => e,
        Err(other) => panic!("expected a snapshot error, got {other}"),
        Ok(vm) => {
            vm.stop();
            panic!("restore must fail")
        }
    };

    // Expectations that do not hold.
    let err = snapshot_err(Vm::restore(RestoreConfig {
        snapshot_dir: dir.clone(),
        host: host_config(console.clone()),
        expect: RestoreExpectations {
            mem_mib: Some(128),
            ..Default::default()
        },
    }));
    assert!(matches!(err, SnapshotError::Mismatch { .. }), "{err}");
    assert!(err.is_rejected_snapshot());
    assert!(chain(&err).contains("guest memory (MiB)"), "{err}");

    // The snapshot has no vsock device; asking for one is a device-set mismatch.
    let mut host = host_config(console.clone());
    host.vsock = Some(vessel_vmm::VsockConfig {
        guest_cid: 3,
        uds_path: g.dir.path().join("v.sock"),
    });
    let err = snapshot_err(Vm::restore(RestoreConfig {
        snapshot_dir: dir.clone(),
        host,
        expect: RestoreExpectations::default(),
    }));
    assert!(chain(&err).contains("vsock device"), "{err}");

    // A short memory file.
    let mem = dir.join(MEMORY_FILE);
    let len = std::fs::metadata(&mem).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .expect("open")
        .set_len(len - 4096)
        .expect("truncate");
    let err = snapshot_err(restore(&dir, console.clone()));
    assert!(chain(&err).contains("memory file"), "{}", chain(&err));
    assert!(err.is_rejected_snapshot());

    // A truncated manifest.
    let manifest = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&manifest).expect("read");
    std::fs::write(&manifest, &text[..text.len() / 2]).expect("write");
    let err = snapshot_err(restore(&dir, console.clone()));
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");

    // No snapshot at all.
    let err = snapshot_err(restore(&g.dir.path().join("nothing"), console));
    assert!(matches!(err, SnapshotError::Read { .. }), "{err}");
    assert!(err.is_rejected_snapshot());
}

#[test]
fn an_existing_snapshot_is_never_overwritten() {
    let g = TestGuest::new(COUNTER, false);
    let dir = counter_snapshot(&g);
    let manifest_before = std::fs::read(dir.join(MANIFEST_FILE)).expect("read");
    let mut vm = Vm::start_with_devices(g.config(BootEntry::Linux64), vec![]).expect("VM starts");
    wait_lines(&g.console, 2, &mut vm);
    let err = vm
        .snapshot(&dir, &SnapshotOptions::default())
        .expect_err("must refuse");
    assert!(matches!(err, SnapshotError::Exists { .. }), "{err}");
    assert_eq!(
        std::fs::read(dir.join(MANIFEST_FILE)).expect("read"),
        manifest_before
    );
    let m = Manifest::load(&dir).expect("still loads");
    assert_eq!(m.boot.mem_mib, 64);
    assert_eq!(m.vcpus.len(), 1);
}
