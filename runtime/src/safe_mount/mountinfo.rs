//! `/proc/self/mountinfo`, parsed once for the whole runtime.
//!
//! The text is read and parsed as bytes: a mount point under the shared directory is named by
//! the guest, and need not be UTF-8 (a `read_to_string` would fail on it, and a lossy decode
//! would name a different path). The kernel escapes space, tab, newline and backslash as
//! `\ooo`; every other byte is as is, so splitting a line on spaces is exact.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::SafeMountError;

/// One line of /proc/self/mountinfo (see proc_pid_mountinfo(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 1: the mount's id (reused after the mount is gone).
    pub mnt_id: u64,
    /// Field 2: the id of the mount it is attached to (its own id for the namespace root).
    pub parent_id: u64,
    /// Field 3: `st_dev` of the filesystem, major part.
    pub major: u32,
    /// Field 3: `st_dev` of the filesystem, minor part.
    pub minor: u32,
    /// Field 4: the directory of the filesystem that is the root of this mount.
    pub root: PathBuf,
    /// Field 5: where it is mounted, relative to this process's root.
    pub mount_point: PathBuf,
    /// Field 6: per-mount options (`rw`/`ro`, `nosuid`, `nodev`, `noexec`, atime, ...).
    pub mount_options: String,
    /// Optional fields (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`).
    pub optional_fields: Vec<String>,
    /// The filesystem type (`ext4`, `tmpfs`, `fuse.sshfs`, ...).
    pub fs_type: String,
    /// The mount source (a device, `tmpfs`, `none`, ...).
    pub source: OsString,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountEntry {
    /// Whether the per-mount options contain `option` (e.g. `"nosuid"`, `"ro"`).
    pub fn has_option(&self, option: &str) -> bool {
        self.mount_options.split(',').any(|o| o == option)
    }

    /// Whether the mount is in a shared peer group (propagates mounts to and from its peers).
    pub fn is_shared(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("shared:"))
    }

    /// `st_dev` of the filesystem, as `makedev(major, minor)`.
    pub fn dev(&self) -> u64 {
        libc::makedev(self.major, self.minor)
    }
}

/// Reads and parses this process's /proc/self/mountinfo.
pub fn read() -> Result<Vec<MountEntry>, SafeMountError> {
    let bytes = std::fs::read("/proc/self/mountinfo").map_err(SafeMountError::MountInfo)?;
    parse(&bytes)
}

/// Parses a mountinfo text; any malformed line is an error (the kernel writes none, and a
/// silently skipped line could be a mount that cleanup then misses).
pub fn parse(text: &[u8]) -> Result<Vec<MountEntry>, SafeMountError> {
    text.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            parse_line(line).ok_or_else(|| SafeMountError::MountInfoFormat {
                line: n + 1,
                text: String::from_utf8_lossy(line).into_owned(),
            })
        })
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let text = |f: &[u8]| std::str::from_utf8(f).ok().map(str::to_owned);
    let number = |f: &[u8]| text(f)?.parse::<u64>().ok();
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let (major, minor) = {
        let dev = text(fields.get(2)?)?;
        let (a, b) = dev.split_once(':')?;
        (a.parse().ok()?, b.parse().ok()?)
    };
    let after = fields.get(sep + 1..)?;
    if after.len() < 3 {
        return None;
    }
    Some(MountEntry {
        mnt_id: number(fields.first()?)?,
        parent_id: number(fields.get(1)?)?,
        major,
        minor,
        root: PathBuf::from(OsString::from_vec(unescape(fields.get(3)?))),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
        mount_options: text(fields.get(5)?)?,
        optional_fields: fields[6..sep]
            .iter()
            .map(|f| text(f))
            .collect::<Option<_>>()?,
        fs_type: String::from_utf8_lossy(&unescape(after[0])).into_owned(),
        source: OsString::from_vec(unescape(after[1])),
        super_options: String::from_utf8_lossy(&unescape(&after[2..].join(&b' '))).into_owned(),
    })
}

/// Decodes mountinfo's `\ooo` escapes (three octal digits, one byte).
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(oct) = field.get(i + 1..i + 4) {
                if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                    let v = oct
                        .iter()
                        .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// How many mounts lie between `id` and the namespace root (0 for the root).
fn tree_depth(id: u64, parents: &HashMap<u64, u64>) -> usize {
    let mut depth = 0;
    let mut at = id;
    // Bounded: a (corrupt) cycle must not hang cleanup.
    while let Some(&parent) = parents.get(&at) {
        if parent == at || depth > parents.len() {
            break;
        }
        depth += 1;
        at = parent;
    }
    depth
}

/// Orders `entries` deepest first: more path components first, and of mounts stacked on the
/// same mount point, the one on top (deeper in the mount tree) first. That is the order to
/// unmount them in, as far as paths can tell.
pub fn sort_deepest_first(entries: &mut [MountEntry], table: &[MountEntry]) {
    let parents: HashMap<u64, u64> = table.iter().map(|m| (m.mnt_id, m.parent_id)).collect();
    entries.sort_by_cached_key(|m| {
        std::cmp::Reverse((
            m.mount_point.components().count(),
            tree_depth(m.mnt_id, &parents),
        ))
    });
}

/// Entries of `table` whose mount point is `dir` or below it (by path components, so `/a/bc`
/// is not below `/a/b`), deepest first.
pub fn entries_beneath(table: &[MountEntry], dir: &Path) -> Vec<MountEntry> {
    let mut found: Vec<MountEntry> = table
        .iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .cloned()
        .collect();
    sort_deepest_first(&mut found, table);
    found
}

/// The ids of `id`'s descendants in the mount tree (mounts on or below it), not `id` itself.
pub fn descendants(table: &[MountEntry], id: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut frontier = vec![id];
    while let Some(p) = frontier.pop() {
        for m in table {
            if m.parent_id == p && m.mnt_id != p && m.mnt_id != id && !out.contains(&m.mnt_id) {
                out.push(m.mnt_id);
                frontier.push(m.mnt_id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    const INFO: &[u8] = b"\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
100 22 0:50 / /run/vessel/sb/shared/c1/rootfs rw,nosuid,nodev - overlay overlay rw,lowerdir=/a
101 100 0:51 / /run/vessel/sb/shared/c1/rootfs/proc rw shared:7 master:3 - proc proc rw
102 22 254:0 /data /run/vessel/sb/shared/c1/volumes/0 ro,nosuid - ext4 /dev/vda rw
103 22 254:0 /x /run/vessel/sb2/shared/a\\040b\\012c\\134d rw - ext4 /dev/vda rw
104 102 0:52 / /run/vessel/sb/shared/c1/volumes/0 rw - tmpfs  rw
105 22 0:53 / /run/vessel/sb/shared/c1/n\\377x rw - tmpfs tmp\\040fs rw,size=4k
";

    #[test]
    fn parses_every_field() {
        let t = parse(INFO).unwrap();
        assert_eq!(t.len(), 7);
        let m = &t[2];
        assert_eq!((m.mnt_id, m.parent_id, m.major, m.minor), (101, 100, 0, 51));
        assert_eq!(m.root, Path::new("/"));
        assert_eq!(
            m.mount_point,
            Path::new("/run/vessel/sb/shared/c1/rootfs/proc")
        );
        assert_eq!(m.optional_fields, vec!["shared:7", "master:3"]);
        assert!(m.is_shared());
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_bytes()),
            ("proc", &b"proc"[..])
        );
        assert_eq!(m.super_options, "rw");
        assert!(t[1].has_option("nosuid") && t[1].has_option("nodev") && !t[1].has_option("ro"));
        assert_eq!(t[1].super_options, "rw,lowerdir=/a");
        assert_eq!(t[3].root, Path::new("/data"));
        assert!(t[3].has_option("ro") && !t[3].is_shared());
        // An empty source field (two spaces) is still a source.
        assert_eq!(t[5].source, OsString::new());
        assert_eq!(t[5].fs_type, "tmpfs");
    }

    #[test]
    fn decodes_escapes_to_bytes() {
        let t = parse(INFO).unwrap();
        assert_eq!(
            t[4].mount_point,
            Path::new("/run/vessel/sb2/shared/a b\nc\\d")
        );
        // Not UTF-8: kept as the bytes the kernel has, not replaced.
        assert_eq!(
            t[6].mount_point.as_os_str().as_bytes(),
            b"/run/vessel/sb/shared/c1/n\xffx"
        );
        assert_eq!(t[6].source.as_bytes(), b"tmp fs");
        assert_eq!(unescape(b"a\\04"), b"a\\04"); // truncated escape stays literal
        assert_eq!(unescape(b"\\400"), b"\\400"); // > 255 is not an escape
        assert_eq!(unescape(b"\\134\\040"), b"\\ ");
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b"22 1 254:0 / / rw - ext4\n"[..],
            b"22 1 254:0 / / rw ext4 /dev/vda rw\n",
            b"x 1 254:0 / / rw - ext4 /dev/vda rw\n",
            b"22 1 254 / / rw - ext4 /dev/vda rw\n",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(err, SafeMountError::MountInfoFormat { line: 1, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn beneath_is_by_component_and_deepest_first() {
        let t = parse(INFO).unwrap();
        let ids: Vec<u64> = entries_beneath(&t, Path::new("/run/vessel/sb"))
            .iter()
            .map(|m| m.mnt_id)
            .collect();
        // proc (7 components) first; then the tmpfs stacked on volumes/0 before the ext4 it
        // covers; then the 6-component rootfs and n\xffx, in input order.
        assert_eq!(ids, vec![101, 104, 102, 100, 105]);
        assert!(entries_beneath(&t, Path::new("/run/vessel/s")).is_empty());
        let sb2 = entries_beneath(&t, Path::new("/run/vessel/sb2"));
        assert_eq!(sb2.len(), 1);
        assert_eq!(sb2[0].mnt_id, 103);
    }

    #[test]
    fn descendants_follow_parent_ids() {
        let t = parse(INFO).unwrap();
        let mut d = descendants(&t, 100);
        d.sort_unstable();
        assert_eq!(d, vec![101]);
        let mut all = descendants(&t, 22);
        all.sort_unstable();
        assert_eq!(all, vec![100, 101, 102, 103, 104, 105]);
        assert!(descendants(&t, 101).is_empty());
    }

    #[test]
    fn reads_this_process() {
        let t = read().unwrap();
        assert!(t.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
