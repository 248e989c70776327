//! What the runtime shows when something in a VM goes wrong: bounded, printable tails of
//! files a guest or a VMM wrote (guest-controlled text: never trusted to be UTF-8 or short).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The last `max` bytes of a file as printable text (empty if unreadable).
pub fn tail_file(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf)
        .chars()
        .filter(|&c| c != '\r')
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}
