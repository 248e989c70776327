//! Helpers for KVM tests: tiny ELF "kernels" wrapping hand-assembled machine code, and
//! running them through the real VMM boot path.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vessel_vmm::{
    BootEntry, ConsoleConfig, ExitReason, RunningVm, VirtioDeviceHandle, Vm, VmConfig,
};

/// Physical load address of the test guests (like a kernel at 16 MiB).
pub const LOAD_ADDR: u64 = 0x100_0000;

/// Fails loudly (never silently passes) where KVM cannot be used.
pub fn require_kvm() {
    let dev = Path::new("/dev/kvm");
    assert!(
        dev.exists(),
        "/dev/kvm does not exist: these tests need KVM (they must run as root on a KVM host)"
    );
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        panic!("cannot open /dev/kvm ({e}): these tests need root or the kvm group");
    }
}

fn push_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// An ELF64 executable with one PT_LOAD of `code` at `LOAD_ADDR` (entry = start of code) and,
/// if `pvh`, a Xen PHYS32_ENTRY note pointing at the same code.
pub fn elf_kernel(code: &[u8], pvh: bool) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    const CODE_OFFSET: u64 = 0x1000;
    let phnum: u16 = if pvh { 2 } else { 1 };
    let note_offset = EHDR + PHDR * u64::from(phnum);
    let mut note = Vec::new();
    push_u32(&mut note, 4); // namesz
    push_u32(&mut note, 4); // descsz
    push_u32(&mut note, 18); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    push_u32(&mut note, LOAD_ADDR as u32);

    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    push_u16(&mut f, 2); // ET_EXEC
    push_u16(&mut f, 62); // EM_X86_64
    push_u32(&mut f, 1);
    push_u64(&mut f, LOAD_ADDR); // e_entry
    push_u64(&mut f, EHDR); // e_phoff
    push_u64(&mut f, 0); // e_shoff
    push_u32(&mut f, 0); // e_flags
    push_u16(&mut f, EHDR as u16);
    push_u16(&mut f, PHDR as u16);
    push_u16(&mut f, phnum);
    push_u16(&mut f, 64);
    push_u16(&mut f, 0);
    push_u16(&mut f, 0);
    // PT_LOAD
    push_u32(&mut f, 1);
    push_u32(&mut f, 5); // R+X
    push_u64(&mut f, CODE_OFFSET);
    push_u64(&mut f, LOAD_ADDR);
    push_u64(&mut f, LOAD_ADDR);
    push_u64(&mut f, code.len() as u64);
    push_u64(&mut f, code.len() as u64);
    push_u64(&mut f, 0x1000);
    if pvh {
        push_u32(&mut f, 4); // PT_NOTE
        push_u32(&mut f, 4);
        push_u64(&mut f, note_offset);
        push_u64(&mut f, 0);
        push_u64(&mut f, 0);
        push_u64(&mut f, note.len() as u64);
        push_u64(&mut f, note.len() as u64);
        push_u64(&mut f, 4);
        f.extend_from_slice(&note);
    }
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(code);
    f
}

/// A guest kernel file plus a console file in a temp dir.
pub struct TestGuest {
    pub dir: tempfile::TempDir,
    pub kernel: PathBuf,
    pub console: PathBuf,
}

impl TestGuest {
    pub fn new(code: &[u8], pvh: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, elf_kernel(code, pvh)).expect("write kernel");
        let console = dir.path().join("console.log");
        Self {
            dir,
            kernel,
            console,
        }
    }

    pub fn config(&self, entry: BootEntry) -> VmConfig {
        let mut c = VmConfig::with_kernel(&self.kernel);
        c.mem_mib = 64;
        c.boot_entry = Some(entry);
        c.console = ConsoleConfig::File(self.console.clone());
        c
    }

    pub fn console_output(&self) -> Vec<u8> {
        std::fs::read(&self.console).unwrap_or_default()
    }
}

/// Waits for the VM with a generous bound (a hung test guest must fail, not hang CI).
pub fn wait(vm: RunningVm) -> ExitReason {
    let mut vm = vm;
    match vm.wait_timeout(Duration::from_secs(60)) {
        Some(reason) => reason,
        None => {
            let reason = vm.stop();
            panic!("guest did not stop within 60 s (stopped it: {reason})");
        }
    }
}

pub fn run(guest: &TestGuest, config: VmConfig, devices: Vec<VirtioDeviceHandle>) -> ExitReason {
    require_kvm();
    let vm = Vm::start_with_devices(config, devices).expect("VM starts");
    let _ = guest;
    wait(vm)
}
