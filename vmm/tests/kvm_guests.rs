//! KVM tests with tiny guests assembled by hand: they run through the VMM's real boot paths
//! (ELF loader, PVH / 64-bit entry setup, buses, devices) and assert what reaches the serial
//! console and how the VM ends. They need root and /dev/kvm and fail loudly without them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{require_kvm, run, wait, TestGuest};
use vessel_vmm::devices::virtio::device::{ActivateError, DeviceCore, GuestMemory, VirtioDevice};
use vessel_vmm::{BootEntry, ExitReason, VirtioDeviceHandle, Vm};

/// 64-bit guest entered through the linux64 path (long mode, our GDT and page tables,
/// RSI = zero page, RSP = boot stack):
/// ```text
///     mov dx, 0x3f8
///     lea rsi, [rip + msg]
///     call puts                       ; needs the boot stack
///     mov rbx, 0x7000                 ; zero page
///     cmp word ptr [rbx + 0x1fe], 0xaa55
///     jne bad
///     mov esi, dword ptr [rbx + 0x228] ; hdr.cmd_line_ptr
///     call puts
///     mov al, 10 ; out dx, al
///     mov al, 0xfe ; out 0x64, al     ; i8042 reset = power off
///     hlt
/// bad: mov al, 'B' ; out dx, al ; hlt
/// puts: lodsb ; test al, al ; jz 1f ; out dx, al ; jmp puts
/// 1:  ret
/// msg: .asciz "hello from long mode\ncmdline: "
/// ```
const LONG_MODE_HELLO: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x37, 0x00, 0x00, 0x00, 0xe8, 0x29, 0x00, 0x00, 0x00,
    0x48, 0xc7, 0xc3, 0x00, 0x70, 0x00, 0x00, 0x66, 0x81, 0xbb, 0xfe, 0x01, 0x00, 0x00, 0x55, 0xaa,
    0x75, 0x13, 0x8b, 0xb3, 0x28, 0x02, 0x00, 0x00, 0xe8, 0x0c, 0x00, 0x00, 0x00, 0xb0, 0x0a, 0xee,
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xb0, 0x42, 0xee, 0xf4, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb,
    0xf8, 0xc3, b'h', b'e', b'l', b'l', b'o', b' ', b'f', b'r', b'o', b'm', b' ', b'l', b'o', b'n',
    b'g', b' ', b'm', b'o', b'd', b'e', b'\n', b'c', b'm', b'd', b'l', b'i', b'n', b'e', b':',
    b' ', 0x00,
];

/// 32-bit flat guest entered through PVH (protected mode, no paging, EBX = hvm_start_info;
/// PVH gives no stack, so the guest sets one):
/// ```text
///     mov esp, 0x8000
///     mov dx, 0x3f8
///     call 1f ; 1: pop esi ; add esi, msg - 1b
///     call puts
///     cmp dword ptr [ebx], 0x336ec578 ; start_info magic
///     jne bad
///     mov al, 'M' ; out dx, al
///     mov eax, [ebx + 0x30] ; add al, '0' ; out dx, al   ; memmap_entries
///     mov al, 10 ; out dx, al
///     mov al, 0xfe ; out 0x64, al ; hlt
/// bad: mov al, 'B' ; out dx, al ; hlt
/// puts: (as above)
/// msg: .asciz "hello from pvh\n"
/// ```
const PVH_HELLO: &[u8] = &[
    0xbc, 0x00, 0x80, 0x00, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x5e, 0x81,
    0xc6, 0x32, 0x00, 0x00, 0x00, 0xe8, 0x1d, 0x00, 0x00, 0x00, 0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33,
    0x75, 0x11, 0xb0, 0x4d, 0xee, 0x8b, 0x43, 0x30, 0x04, 0x30, 0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe,
    0xe6, 0x64, 0xf4, 0xb0, 0x42, 0xee, 0xf4, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xc3,
    b'h', b'e', b'l', b'l', b'o', b' ', b'f', b'r', b'o', b'm', b' ', b'p', b'v', b'h', b'\n',
    0x00,
];

/// 32-bit PVH guest poking MMIO and legacy ports:
/// ```text
///     mov dx, 0x3f8
///     mov eax, ds:0xd0000000          ; virtio-mmio MagicValue
///     mov ecx, 4 ; 1: out dx, al ; shr eax, 8 ; loop 1b
///     mov eax, ds:0xd0000008          ; DeviceID
///     out dx, al
///     mov dword ptr ds:0xd0000050, 0  ; QueueNotify(0): caught by the KVM ioeventfd
///     mov dword ptr ds:0xe0000000, 0x12345678   ; unmapped: ignored
///     mov eax, ds:0xe0000000          ; unmapped: reads all ones
///     cmp eax, 0xffffffff ; jne 2f ; mov al, 'U' ; out dx, al
/// 2:  in al, 0x71 ; out dx, al        ; CMOS, no device: 0xff
///     in al, 0x64 ; out dx, al        ; i8042 status: 0
///     mov al, 10 ; out dx, al
///     mov al, 0xfe ; out 0x64, al ; hlt
/// ```
const PVH_MMIO: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xa1, 0x00, 0x00, 0x00, 0xd0, 0xb9, 0x04, 0x00, 0x00, 0x00, 0xee, 0xc1,
    0xe8, 0x08, 0xe2, 0xfa, 0xa1, 0x08, 0x00, 0x00, 0xd0, 0xee, 0xc7, 0x05, 0x50, 0x00, 0x00, 0xd0,
    0x00, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x00, 0x00, 0xe0, 0x78, 0x56, 0x34, 0x12, 0xa1, 0x00,
    0x00, 0x00, 0xe0, 0x83, 0xf8, 0xff, 0x75, 0x03, 0xb0, 0x55, 0xee, 0xe4, 0x71, 0xee, 0xe4, 0x64,
    0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
];

/// `ud2` with no IDT: #UD -> #GP -> double fault -> triple fault (KVM_EXIT_SHUTDOWN).
const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

/// `cli ; 1: hlt ; jmp 1b` — parks the vCPU in KVM (in-kernel LAPIC), so only a kick ends it.
const PARK: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

#[test]
fn pvh_flat_guest_says_hello_and_powers_off() {
    let g = TestGuest::new(PVH_HELLO, true);
    let reason = run(&g, g.config(BootEntry::Pvh), vec![]);
    assert_eq!(
        reason,
        ExitReason::GuestReset,
        "console: {:?}",
        String::from_utf8_lossy(&g.console_output())
    );
    // Two RAM entries in the PVH memmap for a 64 MiB guest.
    assert_eq!(g.console_output(), b"hello from pvh\nM2\n");
    assert_eq!(reason.exit_code(), 0);
}

#[test]
fn long_mode_guest_through_linux64_setup() {
    let g = TestGuest::new(LONG_MODE_HELLO, false);
    let mut config = g.config(BootEntry::Linux64);
    config.cmdline_extra = "vessel.test=1".to_string();
    let vm = {
        require_kvm();
        Vm::start_with_devices(config, vec![]).expect("VM starts")
    };
    let cmdline = vm.info().cmdline.clone();
    let reason = wait(vm);
    let out = String::from_utf8_lossy(&g.console_output()).into_owned();
    assert_eq!(reason, ExitReason::GuestReset, "console: {out:?}");
    assert_eq!(reason.exit_code(), 0);
    // The guest printed the command line it found through the zero page.
    assert_eq!(out, format!("hello from long mode\ncmdline: {cmdline}\n"));
    assert!(
        cmdline.starts_with("console=ttyS0 reboot=k panic=-1"),
        "{cmdline}"
    );
    assert!(cmdline.ends_with(" vessel.test=1"), "{cmdline}");
}

#[test]
fn mmio_reads_virtio_magic_and_unmapped_reads_all_ones() {
    let g = TestGuest::new(PVH_MMIO, true);
    let device = Arc::new(Mutex::new(NullDevice::new()));
    let handle = VirtioDeviceHandle {
        device: device.clone(),
        subscriber: None,
    };
    let reason = run(&g, g.config(BootEntry::Pvh), vec![handle]);
    assert_eq!(reason, ExitReason::GuestReset);
    // "virt" = 0x74726976 little endian, device id 42, 'U' for the unmapped read,
    // 0xff from the empty CMOS port, 0 from the i8042 status port.
    assert_eq!(g.console_output(), b"virt\x2aU\xff\x00\n");
    // The QueueNotify write went to queue 0's eventfd (KVM ioeventfd, datamatch 0).
    let dev = device.lock().expect("lock");
    assert_eq!(dev.core.queue_evts[0].read().expect("queue 0 notified"), 1);
}

#[test]
fn triple_fault_stops_the_vm_with_a_failure_status() {
    let g = TestGuest::new(TRIPLE_FAULT, false);
    let reason = run(&g, g.config(BootEntry::Linux64), vec![]);
    match &reason {
        ExitReason::TripleFault { vcpu: 0, .. } => {}
        other => panic!("expected a triple fault, got {other}"),
    }
    assert_eq!(reason.exit_code(), 2);
}

#[test]
fn stop_kicks_parked_vcpus_out_of_kvm() {
    require_kvm();
    let g = TestGuest::new(PARK, false);
    let mut config = g.config(BootEntry::Linux64);
    config.vcpus = 2;
    let mut vm = Vm::start_with_devices(config, vec![]).expect("VM starts");
    assert_eq!(
        vm.wait_timeout(Duration::from_millis(300)),
        None,
        "parked guest must keep running"
    );
    let stopper = vm.stopper();
    stopper.stop();
    let reason = wait(vm);
    assert_eq!(reason, ExitReason::Stopped);
    assert_eq!(reason.exit_code(), 0);
}

#[test]
fn pvh_entry_needs_the_elf_note() {
    require_kvm();
    let g = TestGuest::new(PVH_HELLO, false);
    let err = Vm::start_with_devices(g.config(BootEntry::Pvh), vec![])
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("no PVH entry note"), "{err}");
}

/// A virtio device with one queue that never does anything (device id 42).
struct NullDevice {
    core: DeviceCore,
}

impl NullDevice {
    fn new() -> Self {
        Self {
            core: DeviceCore::new(1, 16, 1 << 32).expect("device core"),
        }
    }
}

impl VirtioDevice for NullDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _mem: GuestMemory) -> Result<(), ActivateError> {
        Ok(())
    }
    fn is_activated(&self) -> bool {
        false
    }
}

/// Maps the kernel's virtual range like Linux (0xffffffff80000000 -> 0) on top of our boot
/// page tables, jumps to 0xffffffff8100002a and runs `popcnt`, which KVM-PVM's emulator lacks:
/// ```text
///     mov qword ptr ds:0x9ff8, 0xc003     ; PML4[511] -> PDPT at 0xc000
///     mov qword ptr ds:0xcff0, 0xb003     ; PDPT[510] -> our PD (2 MiB identity pages)
///     mov rax, cr3 ; mov cr3, rax
///     movabs rax, 0xffffffff8100002a ; jmp rax
/// high:                                   ; = LOAD_ADDR + 0x2a physical
///     popcnt rax, rbx
///     mov dx, 0x3f8 ; mov al, 'P' ; out dx, al      ; (hardware KVM gets here)
///     mov al, 0xfe ; out 0x64, al ; hlt
/// ```
const POPCNT_AT_KERNEL_ADDRESS: &[u8] = &[
    0x48, 0xc7, 0x04, 0x25, 0xf8, 0x9f, 0x00, 0x00, 0x03, 0xc0, 0x00, 0x00, 0x48, 0xc7, 0x04, 0x25,
    0xf0, 0xcf, 0x00, 0x00, 0x03, 0xb0, 0x00, 0x00, 0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0x48, 0xb8,
    0x2a, 0x00, 0x00, 0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xe0, 0xf3, 0x48, 0x0f, 0xb8, 0xc3, 0x66,
    0xba, 0xf8, 0x03, 0xb0, 0x50, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
];

#[test]
fn emulation_failure_is_reported_with_rip_and_instruction_bytes() {
    let g = TestGuest::new(POPCNT_AT_KERNEL_ADDRESS, false);
    let reason = run(&g, g.config(BootEntry::Linux64), vec![]);
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // Hardware KVM runs popcnt natively: the guest prints 'P' and powers off.
        assert_eq!(reason, ExitReason::GuestReset);
        assert_eq!(g.console_output(), b"P");
        return;
    }
    let ExitReason::InternalError(report) = &reason else {
        panic!("expected KVM_EXIT_INTERNAL_ERROR on KVM-PVM, got {reason}");
    };
    assert_eq!(report.suberror, 1, "emulation failure");
    assert_eq!(report.rip, 0xffff_ffff_8100_002a);
    assert_eq!(report.rip_gpa, Some(common::LOAD_ADDR + 0x2a));
    assert_eq!(&report.insn_bytes[..5], &[0xf3, 0x48, 0x0f, 0xb8, 0xc3]);
    assert_eq!(report.insn_bytes.len(), 15);
    let text = reason.to_string();
    assert!(
        text.contains("rip 0xffffffff8100002a (gpa 0x100002a)"),
        "{text}"
    );
    assert!(text.contains("insn bytes [f3 48 0f b8 c3"), "{text}");
    assert_eq!(reason.exit_code(), 3);
    assert!(g.console_output().is_empty());
}

#[test]
fn rip_profile_samples_where_the_guest_runs() {
    require_kvm();
    let g = TestGuest::new(PARK, false);
    let mut config = g.config(BootEntry::Linux64);
    let profile = g.dir.path().join("rips.txt");
    config.rip_profile = Some(profile.clone());
    let mut vm = Vm::start_with_devices(config, vec![]).expect("VM starts");
    assert_eq!(vm.wait_timeout(Duration::from_millis(300)), None);
    assert_eq!(vm.stop(), ExitReason::Stopped);
    let text = std::fs::read_to_string(&profile).expect("profile written");
    let mut total = 0;
    for line in text.lines() {
        let (count, rip) = line.split_once('\t').expect("count<TAB>rip");
        let rip = u64::from_str_radix(rip.trim_start_matches("0x"), 16).expect("hex rip");
        assert!(
            (common::LOAD_ADDR..common::LOAD_ADDR + PARK.len() as u64).contains(&rip),
            "sample outside the guest's code: {line}"
        );
        total += count.parse::<u64>().expect("count");
    }
    assert!(total > 0, "no samples in {text:?}");
}

/// `fwait` (which KVM-PVM's emulator lacks; the VMM completes it there), then
/// `mov dx, 0x3f8; mov al, 'F'; out dx, al; mov al, 0xfe; out 0x64, al; hlt`.
const FWAIT: &[u8] = &[
    0x9b, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'F', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
];

#[test]
fn fwait_runs_on_every_host() {
    let g = TestGuest::new(FWAIT, false);
    let reason = run(&g, g.config(BootEntry::Linux64), vec![]);
    assert_eq!(reason, ExitReason::GuestReset, "{reason}");
    assert_eq!(g.console_output(), b"F");
}

/// The VMM's extended-state switching (`kvm::xstate`) as the guest kernel uses it on KVM-PVM,
/// with images at 0x200000 (A) and 0x201000 (B) (the port value is `gpa >> 6`):
/// ```text
///     mov dx, 0xe40 ; mov eax, 0x8000 ; out dx, eax     ; save into A
///     mov rdi, 0x200240 ; mov ecx, 256 ; mov al, 0x5a ; rep stosb   ; A's YMM_Hi128 area
///     mov rbx, 0x200200 ; or byte ptr [rbx], 4          ; XSTATE_BV |= YMM
///     mov dx, 0xe44 ; mov eax, 0x8000 ; out dx, eax     ; restore from A
///     mov dx, 0xe40 ; mov eax, 0x8040 ; out dx, eax     ; save into B
///     mov rsi, 0x201240 ; mov ecx, 256
/// 1:  lodsb ; cmp al, 0x5a ; jne 2f ; loop 1b           ; B's YMM_Hi128 = A's
///     mov rbx, 0x201200 ; test byte ptr [rbx], 4 ; jz 2f
///     mov al, 'X' ; jmp 3f
/// 2:  mov al, 'B'
/// 3:  mov dx, 0x3f8 ; out dx, al ; mov al, 0xfe ; out 0x64, al ; hlt
/// ```
const XSTATE_ROUND_TRIP: &[u8] = &[
    0x66, 0xba, 0x40, 0x0e, 0xb8, 0x00, 0x80, 0x00, 0x00, 0xef, 0x48, 0xc7, 0xc7, 0x40, 0x02, 0x20,
    0x00, 0xb9, 0x00, 0x01, 0x00, 0x00, 0xb0, 0x5a, 0xf3, 0xaa, 0x48, 0xc7, 0xc3, 0x00, 0x02, 0x20,
    0x00, 0x80, 0x0b, 0x04, 0x66, 0xba, 0x44, 0x0e, 0xb8, 0x00, 0x80, 0x00, 0x00, 0xef, 0x66, 0xba,
    0x40, 0x0e, 0xb8, 0x40, 0x80, 0x00, 0x00, 0xef, 0x48, 0xc7, 0xc6, 0x40, 0x12, 0x20, 0x00, 0xb9,
    0x00, 0x01, 0x00, 0x00, 0xac, 0x3c, 0x5a, 0x75, 0x12, 0xe2, 0xf9, 0x48, 0xc7, 0xc3, 0x00, 0x12,
    0x20, 0x00, 0xf6, 0x03, 0x04, 0x74, 0x04, 0xb0, 0x58, 0xeb, 0x02, 0xb0, 0x42, 0x66, 0xba, 0xf8,
    0x03, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
];

/// A guest's YMM upper halves go through the VMM's save/restore ports and come back (the
/// KVM-PVM profile is forced, so this runs the same on hardware KVM, seccomp filters on).
#[test]
fn extended_state_round_trips_through_the_vmm() {
    let g = TestGuest::new(XSTATE_ROUND_TRIP, false);
    let mut config = g.config(BootEntry::Linux64);
    config.host_kind = vessel_vmm::HostKindChoice::Force(vessel_vmm::HostKind::Pvm);
    let reason = run(&g, config, vec![]);
    assert_eq!(reason, ExitReason::GuestReset, "{reason}");
    assert_eq!(
        g.console_output(),
        b"X",
        "'B': the image saved after the restore lacks the YMM state"
    );
}
