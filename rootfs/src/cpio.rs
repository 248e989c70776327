//! A writer for the cpio "newc" format the kernel's initramfs unpacker reads
//! (Documentation/driver-api/early-userspace/buffer-format.rst).

use std::io::Write;

/// Why writing an archive entry failed.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio entry name {0:?} is empty, absolute or contains '..'")]
    BadName(String),
    #[error("cpio entry {0:?} is larger than 4 GiB")]
    TooLarge(String),
    #[error("writing cpio archive")]
    Io(#[from] std::io::Error),
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    CharDevice { major: u32, minor: u32 },
}

/// One archive member. Names are relative (`dev/console`), as the kernel expects.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: EntryKind,
    pub mode: u32,
    pub data: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn dir(name: &'a str, perm: u32) -> Self {
        Self {
            name,
            kind: EntryKind::Dir,
            mode: perm,
            data: &[],
        }
    }
    pub fn file(name: &'a str, perm: u32, data: &'a [u8]) -> Self {
        Self {
            name,
            kind: EntryKind::File,
            mode: perm,
            data,
        }
    }
    pub fn char_device(name: &'a str, perm: u32, major: u32, minor: u32) -> Self {
        Self {
            name,
            kind: EntryKind::CharDevice { major, minor },
            mode: perm,
            data: &[],
        }
    }
}

/// Streams newc entries to `W`; [`CpioWriter::finish`] writes the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    pub fn add(&mut self, entry: &Entry<'_>) -> Result<(), CpioError> {
        let name = entry.name;
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(CpioError::BadName(name.to_string()));
        }
        let size = u32::try_from(entry.data.len()).map_err(|_| CpioError::TooLarge(name.into()))?;
        let (type_bits, rdev) = match entry.kind {
            EntryKind::Dir => (0o040000, (0, 0)),
            EntryKind::File => (0o100000, (0, 0)),
            EntryKind::CharDevice { major, minor } => (0o020000, (major, minor)),
        };
        let nlink = if entry.kind == EntryKind::Dir { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(
            ino,
            type_bits | (entry.mode & 0o7777),
            nlink,
            size,
            rdev,
            name,
        )?;
        self.emit(entry.data)?;
        self.pad()
    }

    /// Writes the `TRAILER!!!` entry, pads to 512 bytes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        while !self.written.is_multiple_of(512) {
            self.emit(&[0])?;
        }
        Ok(self.out)
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        (rmajor, rminor): (u32, u32),
        name: &str,
    ) -> Result<(), CpioError> {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {dmaj:08x}{dmin:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            check = 0,
        );
        self.emit(header.as_bytes())?;
        self.emit(name.as_bytes())?;
        self.emit(&[0])?;
        self.pad()
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// newc aligns headers and file data to 4 bytes.
    fn pad(&mut self) -> Result<(), CpioError> {
        while !self.written.is_multiple_of(4) {
            self.emit(&[0])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.add(&Entry::file("a", 0o644, b"xyz")).unwrap();
        let out = w.finish().unwrap();
        // 110-byte header + "a\0" = 112, data 3 bytes padded to 4.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[14..22], b"000081a4", "mode = regular file 0644");
        assert_eq!(&out[54..62], b"00000003", "filesize");
        assert_eq!(&out[94..102], b"00000002", "namesize includes NUL");
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(out[115], 0);
        assert_eq!(&out[116..122], b"070701", "trailer header is 4-aligned");
        assert!(out.len().is_multiple_of(512));
    }

    #[test]
    fn rejects_unsafe_names() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/init", "../x", "a/../../b"] {
            assert!(
                matches!(w.add(&Entry::dir(bad, 0o755)), Err(CpioError::BadName(_))),
                "{bad}"
            );
        }
    }
}
