//! virtio-fs with a real Linux guest: our guest kernel boots a tiny static `/init` that mounts
//! the share (`mount -t virtiofs vessel /mnt`), reads a file the test put there, writes a new
//! one, checks the virtio-fs policy (`mknod` of a character device fails with `EPERM`, a FIFO
//! can be made, `chmod u+s` leaves no setuid bit), and reboots (= powers off). Both sides are checked: the guest's report on the console
//! and the file it wrote in the host directory. The VM runs in this process through the
//! library, so the event thread serves FUSE under its real seccomp filter (a missing syscall
//! kills this test).
//!
//! The kernel comes from `VESSEL_KERNEL`, default [`DEFAULT_KERNEL`]; a missing kernel fails
//! the test with the path it looked for. Slow on KVM-PVM (the kernel takes ~25 s to reach
//! /init there), so this is one boot with few guest operations.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::require_kvm;
use vessel_vmm::{ConsoleConfig, ExitReason, SharedDirConfig, Vm, VmConfig};

/// The kernel the lead keeps up to date (with CONFIG_VIRTIO_FS and CONFIG_FUSE_FS).
const DEFAULT_KERNEL: &str = "/var/tmp/kbuild/linux-source-6.1/vmlinux";
/// A hung guest fails the test instead of hanging it.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

const HOST_TEXT: &str = "written by the host\n";

/// The guest's /init. PID 1 with the kernel's console as fds 0-2.
const INIT_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static void say(const char *what, int err) {
    char line[96] = "virtiofs-test: ";
    strcat(line, what);
    if (err) {
        char num[12];
        int i = sizeof num - 1;
        num[i] = 0;
        do { num[--i] = '0' + err % 10; err /= 10; } while (err && i > 0);
        strcat(line, " ");
        strcat(line, num + i);
    }
    strcat(line, "\n");
    write(1, line, strlen(line));
}

static int uptime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(void) {
    static const char prefix[] = "guest read: ";
    char buf[128];
    int fd, n, started = uptime_ms();
    if (mount("vessel", "/mnt", "virtiofs", 0, 0) != 0) { say("mount failed, errno", errno); goto out; }
    fd = open("/mnt/from-host.txt", O_RDONLY);
    if (fd < 0) { say("open failed, errno", errno); goto out; }
    n = read(fd, buf, sizeof buf);
    close(fd);
    if (n <= 0) { say("read failed, errno", n < 0 ? errno : 0); goto out; }
    fd = open("/mnt/from-guest.txt", O_WRONLY | O_CREAT | O_EXCL, 0640);
    if (fd < 0) { say("create failed, errno", errno); goto out; }
    if (write(fd, prefix, sizeof prefix - 1) != sizeof prefix - 1 || write(fd, buf, n) != n) {
        say("write failed, errno", errno);
        goto out;
    }
    if (close(fd) != 0) { say("close failed, errno", errno); goto out; }
    /* The policy: no device nodes (the guest's root has CAP_MKNOD, the host says no), FIFOs
       allowed, setuid stripped. */
    if (mknod("/mnt/null", S_IFCHR | 0666, makedev(1, 3)) == 0) { say("mknod of a char device succeeded", 0); goto out; }
    if (errno != EPERM) { say("mknod of a char device: not EPERM but errno", errno); goto out; }
    if (mknod("/mnt/fifo", S_IFIFO | 0600, 0) != 0) { say("mknod fifo failed, errno", errno); goto out; }
    fd = open("/mnt/suid", O_WRONLY | O_CREAT | O_EXCL, 0755);
    if (fd < 0 || close(fd) != 0) { say("create suid failed, errno", errno); goto out; }
    if (chmod("/mnt/suid", 04755) != 0) { say("chmod u+s failed, errno", errno); goto out; }
    struct stat st;
    if (stat("/mnt/suid", &st) != 0) { say("stat failed, errno", errno); goto out; }
    if (st.st_mode & 06000) { say("setuid after chmod u+s, mode", st.st_mode & 07777); goto out; }
    say("ok", 0);
    say("/init started at guest ms", started);
    say("share mounted, read and written by guest ms", uptime_ms());
out:
    reboot(RB_AUTOBOOT);
    return 0;
}
"#;

fn kernel() -> PathBuf {
    let path =
        std::env::var_os("VESSEL_KERNEL").map_or_else(|| DEFAULT_KERNEL.into(), PathBuf::from);
    assert!(
        path.is_file(),
        "guest kernel {} not found (set VESSEL_KERNEL, or build one with guest-kernel/build.sh)",
        path.display()
    );
    path
}

/// Compiles the static /init.
fn build_init(dir: &Path) -> Vec<u8> {
    let src = dir.join("init.c");
    let bin = dir.join("init");
    std::fs::write(&src, INIT_C).expect("write init.c");
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running gcc (build-essential is needed): {e}"));
    assert!(
        out.status.success(),
        "gcc -static failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&bin).expect("read the built init")
}

/// One newc cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        u32::try_from(data.len()).expect("file under 4 GiB"),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        u32::try_from(name.len() + 1).expect("short name"),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An initramfs with /dev/console, /mnt and /init.
fn initramfs(init: &[u8]) -> Vec<u8> {
    let mut cpio = Vec::new();
    cpio_entry(&mut cpio, 1, "dev", libc::S_IFDIR | 0o755, (0, 0), &[]);
    cpio_entry(
        &mut cpio,
        2,
        "dev/console",
        libc::S_IFCHR | 0o600,
        (5, 1),
        &[],
    );
    cpio_entry(&mut cpio, 3, "mnt", libc::S_IFDIR | 0o755, (0, 0), &[]);
    cpio_entry(&mut cpio, 4, "init", libc::S_IFREG | 0o755, (0, 0), init);
    cpio_entry(&mut cpio, 0, "TRAILER!!!", 0, (0, 0), &[]);
    cpio
}

#[test]
fn guest_mounts_reads_and_writes_the_share() {
    require_kvm();
    let kernel = kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    std::fs::write(&initrd, initramfs(&build_init(dir.path()))).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("from-host.txt"), HOST_TEXT).unwrap();
    let console = dir.path().join("console.log");

    let mut config = VmConfig::with_kernel(&kernel);
    config.initrd = Some(initrd);
    config.mem_mib = 128;
    config.console = ConsoleConfig::File(console.clone());
    config.shared_dirs = vec![SharedDirConfig {
        tag: "vessel".into(),
        path: shared.clone(),
        xattr: false,
    }];
    let started = Instant::now();
    let mut vm = Vm::start(config).expect("VM starts");
    assert!(
        vm.info().cmdline.contains("virtio_mmio.device="),
        "{}",
        vm.info().cmdline
    );
    let reason = match vm.wait_timeout(BOOT_LIMIT) {
        Some(reason) => reason,
        None => {
            let reason = vm.stop();
            panic!(
                "guest did not power off within {BOOT_LIMIT:?} (stopped: {reason}); console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
    };
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(reason, ExitReason::GuestReset, "console:\n{output}");
    assert!(
        output.contains("virtiofs-test: ok"),
        "the guest did not report success; console:\n{output}"
    );
    let written = std::fs::read_to_string(shared.join("from-guest.txt"))
        .unwrap_or_else(|e| panic!("from-guest.txt on the host: {e}; console:\n{output}"));
    assert_eq!(written, format!("guest read: {HOST_TEXT}"));
    let mode = std::fs::metadata(shared.join("from-guest.txt"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o640,
        "the guest's mode (0640 under its umask 022)"
    );
    // The policy, seen from the host.
    assert!(
        std::fs::symlink_metadata(shared.join("null")).is_err(),
        "no device node on the host"
    );
    let fifo = std::fs::symlink_metadata(shared.join("fifo")).expect("the guest's FIFO");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    let suid = std::fs::metadata(shared.join("suid")).expect("the guest's chmod u+s file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&suid.permissions()) & 0o7777,
        0o755,
        "chmod u+s in the guest leaves no setuid bit on the host"
    );
    // Reported, not asserted: speed is never asserted in tests.
    eprintln!("virtio-fs guest: boot, mount, read, write, power-off in {elapsed:.1?}");
    for line in output.lines().filter(|l| l.contains("guest ms")) {
        eprintln!("  {line}");
    }
}
