//! The serial console's output file, bounded: what a guest prints cannot fill the host's
//! disk or tmpfs (`/run`, where a pod's console log lives, is host memory).

use std::io::Write;

/// A console file that never grows past `max` bytes: when a write would, the file is cut
/// back to empty (append mode: writes go on at the new end) with a marker line, so it keeps
/// the newest output.
pub struct CappedConsole<W> {
    file: W,
    written: u64,
    max: u64,
}

/// What a console file cut back to empty starts with.
pub const CONSOLE_CUT_MARKER: &str =
    "[vessel-vmm: console log reached its size limit; older output dropped]\n";

/// The file operations [`CappedConsole`] needs (a trait so the logic is testable).
pub trait Truncate: Write {
    fn truncate(&mut self) -> std::io::Result<()>;
}

impl Truncate for std::fs::File {
    fn truncate(&mut self) -> std::io::Result<()> {
        self.set_len(0)
    }
}

impl<W: Truncate> CappedConsole<W> {
    pub fn new(file: W, max: u64) -> Self {
        CappedConsole {
            file,
            written: 0,
            max: max.max(CONSOLE_CUT_MARKER.len() as u64 * 2),
        }
    }
}

impl<W: Truncate> Write for CappedConsole<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Never more than the cap in one go either.
        let room = self.max - CONSOLE_CUT_MARKER.len() as u64;
        let buf = &buf[..buf.len().min(room as usize)];
        if self.written + buf.len() as u64 > self.max {
            self.file.truncate()?;
            self.file.write_all(CONSOLE_CUT_MARKER.as_bytes())?;
            self.written = CONSOLE_CUT_MARKER.len() as u64;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem {
        data: Vec<u8>,
        cuts: usize,
    }

    impl Write for Mem {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Truncate for Mem {
        fn truncate(&mut self) -> std::io::Result<()> {
            self.data.clear();
            self.cuts += 1;
            Ok(())
        }
    }

    #[test]
    fn never_grows_past_the_cap_and_keeps_the_newest_output() {
        let max = 1000u64;
        let mut c = CappedConsole::new(Mem::default(), max);
        for i in 0..500u32 {
            c.write_all(format!("line {i}\n").as_bytes()).unwrap();
            assert!(
                c.file.data.len() as u64 <= max,
                "{} bytes",
                c.file.data.len()
            );
        }
        assert!(c.file.cuts > 0);
        let text = String::from_utf8(c.file.data.clone()).unwrap();
        assert!(text.starts_with(CONSOLE_CUT_MARKER), "{text}");
        assert!(text.ends_with("line 499\n"), "{text}");
        // One huge write is bounded too.
        c.write_all(&vec![b'x'; 10_000]).unwrap();
        assert!(c.file.data.len() as u64 <= max);
    }

    #[test]
    fn a_real_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let mut c = CappedConsole::new(f, 4096);
        for _ in 0..100 {
            c.write_all(&[b'a'; 300]).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 4096, "{len}");
        assert!(std::fs::read(&path)
            .unwrap()
            .starts_with(CONSOLE_CUT_MARKER.as_bytes()));
    }
}
