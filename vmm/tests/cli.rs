//! The `vessel-vmm` binary: errors for bad input, exit status for guest outcomes.

mod common;

use std::process::{Command, Output};

use common::{elf_kernel, require_kvm};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vessel-vmm"))
        .args(args)
        .output()
        .expect("run vessel-vmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// PVH guest: `mov esp, 0x8000; mov dx, 0x3f8; mov al, 'K'; out dx, al; mov al, 10;
/// out dx, al; mov al, 0xfe; out 0x64, al; hlt`.
const PVH_OK: &[u8] = &[
    0xbc, 0x00, 0x80, 0x00, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xb0, 0x0a, 0xee, 0xb0,
    0xfe, 0xe6, 0x64, 0xf4,
];

fn kernel_file(dir: &tempfile::TempDir, code: &[u8], pvh: bool) -> String {
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, elf_kernel(code, pvh)).expect("write");
    path.to_string_lossy().into_owned()
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let o = vmm(&["--kernel", "/nonexistent/vmlinux", "--no-initrd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("kernel /nonexistent/vmlinux does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bzimage_or_garbage_kernel_is_rejected() {
    require_kvm();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bzImage");
    std::fs::write(&path, b"MZ\x00\x00not an elf").expect("write");
    let o = vmm(&["--kernel", path.to_str().expect("utf8"), "--no-initrd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not an ELF vmlinux"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_memory_and_vcpu_counts() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(&dir, PVH_OK, true);
    let o = vmm(&["--kernel", &k, "--no-initrd", "--mem-mib", "16"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("16 MiB is too small"), "{}", stderr(&o));
    let o = vmm(&["--kernel", &k, "--no-initrd", "--vcpus", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0 vCPUs"), "{}", stderr(&o));
    let o = vmm(&["--kernel", &k, "--no-initrd", "--boot-entry", "bios"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("unknown boot entry"), "{}", stderr(&o));
}

#[test]
fn initrd_larger_than_memory_is_rejected() {
    require_kvm();
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(&dir, PVH_OK, true);
    let initrd = dir.path().join("big.cpio");
    let f = std::fs::File::create(&initrd).expect("create");
    f.set_len(40 << 20).expect("sparse initrd");
    let o = vmm(&[
        "--kernel",
        &k,
        "--initrd",
        initrd.to_str().expect("utf8"),
        "--mem-mib",
        "32",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not fit"), "{}", stderr(&o));
}

#[test]
fn guest_power_off_exits_zero_with_console_on_stdout() {
    require_kvm();
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(&dir, PVH_OK, true);
    let o = vmm(&["--kernel", &k, "--no-initrd", "--boot-entry", "pvh"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout, b"K\n");
    let err = stderr(&o);
    assert!(
        err.contains("host kvm-"),
        "the host profile is logged: {err}"
    );
    assert!(err.contains("kernel command line: console=ttyS0"), "{err}");
}

#[test]
fn console_file_and_triple_fault_status() {
    require_kvm();
    let dir = tempfile::tempdir().expect("tmp");
    // 64-bit: `mov dx, 0x3f8; mov al, 'T'; out dx, al; ud2` -> triple fault.
    let k = kernel_file(
        &dir,
        &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'T', 0xee, 0x0f, 0x0b],
        false,
    );
    let console = dir.path().join("console.log");
    let o = vmm(&[
        "--kernel",
        &k,
        "--no-initrd",
        "--boot-entry",
        "linux64",
        "--console",
        console.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("triple fault"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&console).expect("console"), b"T");
    assert!(o.stdout.is_empty());
}

#[test]
fn emulation_failure_is_reported_on_stderr_with_status_3() {
    require_kvm();
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // Only KVM-PVM's emulator lacks popcnt; the library test covers hardware KVM.
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // 64-bit: `popcnt rax, rbx; hlt` at the kernel entry.
    let k = kernel_file(&dir, &[0xf3, 0x48, 0x0f, 0xb8, 0xc3, 0xf4], false);
    let o = vmm(&["--kernel", &k, "--no-initrd", "--boot-entry", "linux64"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure), rip 0x1000000"),
        "{err}"
    );
    assert!(err.contains("insn bytes [f3 48 0f b8 c3 f4"), "{err}");
    assert!(
        err.contains("addr2line -f -i -e vmlinux 0x1000000"),
        "{err}"
    );
    eprintln!("{err}");
}

#[test]
fn sigterm_stops_the_vm_cleanly_and_reports_where_the_guest_was() {
    require_kvm();
    let dir = tempfile::tempdir().expect("tmp");
    // `cli; 1: hlt; jmp 1b` at 0x1000000.
    let k = kernel_file(&dir, &[0xfa, 0xf4, 0xeb, 0xfd], false);
    let child = Command::new(env!("CARGO_BIN_EXE_vessel-vmm"))
        .args(["--kernel", &k, "--no-initrd", "--boot-entry", "linux64"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the VM runs (the host profile line is logged before the vCPUs start).
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child process.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let o = child.wait_with_output().expect("wait");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("vcpu0 stopped at rip 0x100000"), "{err}");
    assert!(err.contains("VM stopped: stopped by the host"), "{err}");
}

#[test]
fn vsock_socket_serves_under_seccomp_and_is_removed_on_stop() {
    use std::io::Write as _;
    require_kvm();
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(&dir, &[0xfa, 0xf4, 0xeb, 0xfd], false);
    let uds = dir.path().join("vsock.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vessel-vmm"))
        .args(["--kernel", &k, "--no-initrd", "--boot-entry", "linux64"])
        .args([
            "--vsock-uds",
            uds.to_str().expect("utf8"),
            "--vsock-cid",
            "7",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !uds.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(uds.exists(), "vsock socket never appeared");
    // A host connection (the guest has no driver, so nothing answers): the event thread
    // accepts and reads it under its seccomp filter.
    let mut conn = std::os::unix::net::UnixStream::connect(&uds).expect("connect");
    conn.write_all(b"CONNECT 1024\n").expect("write");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: signalling our own child process.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let o = child.wait_with_output().expect("wait");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("virtio_mmio.device=4K@0xd0000000:5"), "{err}");
    assert!(!uds.exists(), "socket left behind");
}

#[test]
fn shared_dir_flag_is_checked_and_wired() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(&dir, PVH_OK, true);
    let o = vmm(&[
        "--kernel",
        &k,
        "--no-initrd",
        "--shared-dir",
        "bad tag=/tmp",
    ]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(stderr(&o).contains("tag"), "{}", stderr(&o));
    let o = vmm(&["--kernel", &k, "--no-initrd", "--shared-dir", "/tmp"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("TAG=HOSTPATH"), "{}", stderr(&o));
    let o = vmm(&[
        "--kernel",
        &k,
        "--no-initrd",
        "--shared-dir",
        "vessel=/nonexistent/share",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("shared directory /nonexistent/share does not exist"),
        "{}",
        stderr(&o)
    );

    require_kvm();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    let arg = format!("vessel={}", shared.display());
    let o = vmm(&["--kernel", &k, "--no-initrd", "--shared-dir", &arg]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("virtio-fs: sharing"), "{err}");
    assert!(
        err.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "the share got the first virtio slot: {err}"
    );
}
