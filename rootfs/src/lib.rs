//! Builds vessel's guest initramfs: an uncompressed cpio (newc) archive whose `/init` is the
//! statically linked agent, plus the handful of directories and device nodes the kernel and
//! the agent need before devtmpfs is mounted. Nothing else goes in: every byte is copied by the
//! guest kernel at boot, and on KVM-PVM every kernel instruction is emulated.
//!
//! The archive is uncompressed on purpose: decompression in an emulated kernel costs far more
//! than the extra bytes (the guest kernel is built without any RD_* decompressor).

mod cpio;

pub use cpio::{CpioError, CpioWriter, Entry, EntryKind};

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why building the initramfs failed.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a static ELF executable ({reason})")]
    NotStaticElf { path: PathBuf, reason: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cpio(#[from] CpioError),
}

/// Directories created in the archive (mount points the agent uses as PID 1).
pub const DIRS: &[&str] = &["dev", "proc", "sys", "run", "tmp", "etc", "sbin"];

/// Builds the initramfs at `out` with `agent` as `/init`; returns the archive size in bytes.
pub fn build_initrd(agent: &Path, out: &Path) -> Result<u64, InitrdError> {
    let agent_bytes = std::fs::read(agent).map_err(|source| InitrdError::Read {
        path: agent.to_path_buf(),
        source,
    })?;
    check_static_elf(&agent_bytes).map_err(|reason| InitrdError::NotStaticElf {
        path: agent.to_path_buf(),
        reason,
    })?;
    let write_err = |source| InitrdError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(write_err)?;
    let mut writer = CpioWriter::new(BufWriter::new(file));
    for dir in DIRS {
        writer.add(&Entry::dir(dir, 0o755))?;
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    writer.add(&Entry::char_device("dev/console", 0o600, 5, 1))?;
    writer.add(&Entry::char_device("dev/null", 0o666, 1, 3))?;
    writer.add(&Entry::file("init", 0o755, &agent_bytes))?;
    let mut inner = writer.finish()?;
    inner.flush().map_err(write_err)?;
    let size = std::fs::metadata(out).map_err(write_err)?.len();
    Ok(size)
}

/// Accepts only a 64-bit x86 ELF executable without a program interpreter: the initramfs has
/// no dynamic loader or libc.
fn check_static_elf(bytes: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if u16_at(18) != 62 {
        return Err("not an x86-64 binary".into());
    }
    let phoff = usize::try_from(u64_at(32)).map_err(|_| "bad program header offset")?;
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    for i in 0..phnum {
        let off = phoff
            .checked_add(i.checked_mul(phentsize).ok_or("program header overflow")?)
            .ok_or("program header overflow")?;
        if off + 4 > bytes.len() {
            return Err("truncated program headers".into());
        }
        let p_type =
            u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
        if p_type == PT_INTERP {
            return Err("dynamically linked (has PT_INTERP)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn rejects_non_elf_and_dynamic_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
        let err = build_initrd(&script, &dir.path().join("out.cpio")).unwrap_err();
        assert!(matches!(err, InitrdError::NotStaticElf { .. }), "{err}");
        // /bin/sh on Debian is dynamically linked.
        let err = build_initrd(Path::new("/bin/sh"), &dir.path().join("out.cpio")).unwrap_err();
        assert!(err.to_string().contains("PT_INTERP"), "{err}");
    }

    #[test]
    fn missing_agent_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_initrd(&dir.path().join("nope"), &dir.path().join("o")).unwrap_err();
        assert!(matches!(err, InitrdError::Read { .. }), "{err}");
    }

    /// Builds an initrd around a real static binary and lists it with the system's cpio.
    #[test]
    fn archive_lists_with_gnu_cpio() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            panic!("this test needs busybox-static (/bin/busybox); apt-get install busybox-static");
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.cpio");
        let size = build_initrd(busybox, &out).unwrap();
        assert!(size.is_multiple_of(512), "archive is padded to 512 bytes");
        let listing = Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&out)
            .output()
            .expect("running cpio (apt-get install cpio)");
        assert!(listing.status.success(), "{listing:?}");
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with("crw") && l.ends_with("dev/console")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")),
            "{text}"
        );
        // Extract and compare the payload byte for byte.
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -id --quiet --no-absolute-filenames init < {}",
                x.display(),
                out.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read(x.join("init")).unwrap(),
            std::fs::read(busybox).unwrap()
        );
    }
}
