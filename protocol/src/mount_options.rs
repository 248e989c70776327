//! The one parser of mount(8)-style options, for the host's mounts (containerd's rootfs, the
//! shared directory) and the guest's (the spec's mounts, sandbox storages): flags to set,
//! flags a remount must clear, propagation changes (applied by separate mount calls), and the
//! rest as filesystem data.

use nix::mount::MsFlags;

/// What a list of options asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags named off (`rw`, `suid`, `exec`...), which matter for a remount.
    pub clear: MsFlags,
    /// Propagation changes, in order (`rprivate`, `slave`...).
    pub propagation: Vec<MsFlags>,
    /// Everything else, for the filesystem (`lowerdir=...`, `mode=755`, `size=64m`).
    pub data: Vec<String>,
}

impl MountOptions {
    /// The filesystem data as the kernel takes it.
    pub fn data_string(&self) -> String {
        self.data.join(",")
    }
}

/// Parses `options`. Later options win (`ro,rw` is read-write); `defaults` means nothing.
pub fn parse(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for opt in options {
        if let Some(p) = propagation_flag(opt) {
            o.propagation.push(p);
            continue;
        }
        let (set, clear) = match opt.as_str() {
            "defaults" => continue,
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.clear = (o.clear | clear) & !set;
    }
    o
}

/// MS_* flags for a propagation name (`rprivate`, `slave`...).
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation_apart() {
        let o = opts(&[
            "defaults",
            "rbind",
            "ro",
            "nosuid",
            "rslave",
            "lowerdir=/a:/b",
            "mode=755",
        ]);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(o.propagation, [MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data_string(), "lowerdir=/a:/b,mode=755");
    }

    #[test]
    fn the_last_word_wins() {
        let o = opts(&["ro", "rw", "nosuid", "suid", "noexec"]);
        assert_eq!(o.flags, MsFlags::MS_NOEXEC);
        assert_eq!(o.clear, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        let o = opts(&["rw", "ro"]);
        assert_eq!((o.flags, o.clear), (MsFlags::MS_RDONLY, MsFlags::empty()));
    }
}
