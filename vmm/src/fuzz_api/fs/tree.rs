//! The share the virtio-fs harness serves, and what lies beside it (the canary).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::CANARY;
use crate::fuzz_api::ScratchDir;

/// The share and what lies beside it.
pub(super) struct Tree {
    dir: ScratchDir,
}

impl Tree {
    pub(super) fn new() -> Self {
        let dir = ScratchDir::new("fs");
        let base = dir.path();
        let shared = base.join("shared");
        let outside = base.join("outside");
        for d in [&shared, &outside, &shared.join("dir")] {
            std::fs::create_dir(d).expect("fuzz share");
        }
        std::fs::write(outside.join("canary"), CANARY).expect("canary");
        // Whatever the umask (FUSE_INIT sets it to 0 for the whole process).
        std::fs::set_permissions(
            outside.join("canary"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("canary mode");
        std::fs::write(shared.join("file"), b"hello\n").expect("share file");
        std::fs::write(shared.join("dir/inner"), b"inner\n").expect("share file");
        let canary = outside.join("canary");
        std::os::unix::fs::symlink("../outside/canary", shared.join("link-out")).expect("link");
        std::os::unix::fs::symlink(&canary, shared.join("abs-link")).expect("link");
        std::os::unix::fs::symlink("../outside", shared.join("link-dir")).expect("link");
        let fifo =
            std::ffi::CString::new(shared.join("fifo").into_os_string().into_encoded_bytes())
                .expect("path");
        // SAFETY: `fifo` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        Self { dir }
    }

    pub(super) fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    pub(super) fn canary(&self) -> PathBuf {
        self.dir.path().join("outside/canary")
    }

    /// Nothing outside the share changed.
    pub(super) fn check(&self) {
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(self.dir.path()),
            ["outside", "shared"],
            "something appeared beside the share"
        );
        assert_eq!(
            names(&self.dir.path().join("outside")),
            ["canary"],
            "something appeared outside the share"
        );
        let canary = self.canary();
        let meta = std::fs::symlink_metadata(&canary).expect("canary");
        assert!(meta.is_file(), "the canary was replaced");
        assert_eq!(
            std::fs::read(&canary).expect("canary"),
            CANARY,
            "the canary was written"
        );
        assert_eq!(
            (
                meta.uid(),
                meta.gid(),
                meta.permissions().mode() & 0o7777,
                meta.nlink()
            ),
            (0, 0, 0o644, 1),
            "the canary's owner, mode or links changed"
        );
    }
}
