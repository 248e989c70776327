//! A real containerd for tests, and a busybox image built locally.
//!
//! [`Containerd::start`] runs Debian's `containerd` (1.6) with its own config, root, state and
//! socket under a temp dir, with the workspace's `target/<profile>` first in its PATH so
//! `ctr --runtime io.containerd.vessel.v2` finds `containerd-shim-vessel-v2`.
//! [`Containerd::import_busybox`] builds an OCI image layout by hand from `busybox-static`
//! (one uncompressed tar layer, config, manifest, index) and imports it with `ctr images import`.
//!
//! ```no_run
//! use vessel_tests::containerd::{Containerd, BUSYBOX_REF};
//! let ctrd = Containerd::start().unwrap();
//! ctrd.import_busybox().unwrap();
//! let out = ctrd.ctr(&["run", "--rm", "--runtime", "io.containerd.runc.v2", BUSYBOX_REF, "t1", "echo", "hi"]);
//! assert_eq!(out.stdout, "hi\n");
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The name the busybox image is imported under.
pub const BUSYBOX_REF: &str = "docker.io/library/vessel-busybox:latest";
/// containerd's namespace used by the tests.
pub const NAMESPACE: &str = "vessel-test";
/// Applets linked into the image's /bin (the CRI tests use httpd, wget, readlink, timeout, ...).
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "ls", "head", "seq", "tr", "wc", "printf",
    "tty", "id", "hostname", "test", "dd", "mkdir", "rm", "touch", "sync", "env", "kill", "httpd",
    "wget", "readlink", "timeout", "nc", "sed", "grep", "cut", "tail", "uname", "ps",
];

/// The workspace's build output dir holding the test binaries (target/debug or target/release).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// A workspace binary that must have been built; a clear error if not.
pub fn workspace_binary(name: &str, package: &str) -> Result<PathBuf> {
    let p = target_dir().join(name);
    if !p.is_file() {
        bail!(
            "{} not built: run `cargo build -p {package}` before these tests",
            p.display()
        );
    }
    Ok(p)
}

/// What a `ctr` call did.
#[derive(Debug)]
pub struct CtrOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtrOutput {
    fn from(o: Output) -> CtrOutput {
        CtrOutput {
            status: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// A running containerd owned by a test.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts containerd with no extra environment.
    pub fn start() -> Result<Containerd> {
        Containerd::start_with_env(&[])
    }

    /// Starts containerd; `env` is added to its (and so the shims') environment, e.g.
    /// `VESSEL_CONFIG`.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Containerd> {
        Containerd::start_configured(env, false, &|_| Ok(String::new()))
    }

    /// Starts containerd with its CRI plugin enabled (the plain variants disable it).
    /// `plugins` returns the config text appended after the base config (e.g. the
    /// `[plugins."io.containerd.grpc.v1.cri"]` tables); it gets containerd's temp dir, so it
    /// can write files there (a CNI config) and name paths under it. See [`crate::cri`].
    pub fn start_with_cri(
        env: &[(&str, &str)],
        plugins: &dyn Fn(&Path) -> Result<String>,
    ) -> Result<Containerd> {
        Containerd::start_configured(env, true, plugins)
    }

    fn start_configured(
        env: &[(&str, &str)],
        cri: bool,
        plugins: &dyn Fn(&Path) -> Result<String>,
    ) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("vctrd")
            .tempdir_in("/tmp")?;
        let config = dir.path().join("config.toml");
        let d = dir.path().display();
        let disabled_cri = if cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\", "
        };
        let extra = plugins(dir.path())?;
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled_cri}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
{extra}"#
            ),
        )?;
        let mut c = Containerd {
            dir,
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        c.spawn()?;
        Ok(c)
    }

    /// Starts the containerd process (its config and dirs already written) and waits until
    /// it answers.
    fn spawn(&mut self) -> Result<()> {
        let config = self.dir.path().join("config.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let path = format!(
            "{}:{}",
            target_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .context("spawning containerd (apt-get install containerd)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.socket().exists() && self.ctr(&["version"]).success() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|ch| ch.try_wait().ok().flatten())
            {
                bail!("containerd exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("containerd did not come up in 60 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills containerd (SIGKILL, as a crash) and starts it again on the same config, root
    /// and state; shims and their tasks live on, as in production.
    pub fn crash_and_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
    /// containerd's root (content store, snapshots).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// containerd's whole log (shim logs land here too).
    pub fn log_text(&self) -> String {
        let text = std::fs::read(self.dir.path().join("containerd.log")).unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The last 4 KiB of containerd's log (shim logs land here too).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(self.dir.path().join("containerd.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(NAMESPACE, args)
    }

    fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .args(args);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `ctr` with stdin from /dev/null and waits for it.
    pub fn ctr(&self, args: &[&str]) -> CtrOutput {
        let out = self
            .ctr_command(args)
            .stdin(Stdio::null())
            .output()
            .map(CtrOutput::from);
        out.unwrap_or_else(|e| CtrOutput {
            status: None,
            stdout: String::new(),
            stderr: format!("spawning ctr: {e}"),
        })
    }

    /// Runs `ctr` in containerd namespace `namespace` (e.g. CRI's `k8s.io`) and waits for it.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> CtrOutput {
        self.ctr_command_in(namespace, args)
            .stdin(Stdio::null())
            .output()
            .map(CtrOutput::from)
            .unwrap_or_else(|e| CtrOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("spawning ctr: {e}"),
            })
    }

    /// Imports an image tar (e.g. from [`build_oci_tar`]) into `namespace`.
    pub fn import_image(&self, namespace: &str, tar: &Path) -> Result<()> {
        let out = self.ctr_in(namespace, &["images", "import", &tar.display().to_string()]);
        if !out.success() {
            bail!(
                "ctr -n {namespace} images import {} failed: {}{}",
                tar.display(),
                out.stdout,
                out.stderr
            );
        }
        Ok(())
    }

    /// Runs `ctr` with `input` on its stdin.
    pub fn ctr_with_input(&self, args: &[&str], input: &[u8]) -> Result<CtrOutput> {
        let mut child = self
            .ctr_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(input)?;
        drop(stdin);
        Ok(CtrOutput::from(child.wait_with_output()?))
    }

    /// Starts `ctr` in the background (e.g. a `ctr run` to be killed).
    pub fn ctr_spawn(&self, args: &[&str]) -> Result<Child> {
        Ok(self
            .ctr_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Runs `ctr` under a pseudo-terminal (`script`), for `--tty`. Returns the terminal's text.
    pub fn ctr_in_pty(&self, args: &[&str]) -> CtrOutput {
        let mut line = format!(
            "ctr --address {} --namespace {NAMESPACE}",
            self.socket().display()
        );
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd.output()
            .map(CtrOutput::from)
            .unwrap_or_else(|e| CtrOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("spawning script: {e}"),
            })
    }

    /// Builds the busybox OCI image and imports it as [`BUSYBOX_REF`].
    pub fn import_busybox(&self) -> Result<()> {
        let tar = build_busybox_oci_tar(&self.dir.path().join("image"))?;
        let out = self.ctr(&["images", "import", &tar.display().to_string()]);
        if !out.success() {
            bail!("ctr images import failed: {}{}", out.stdout, out.stderr);
        }
        let list = self.ctr(&["images", "ls", "-q"]);
        if !list.stdout.lines().any(|l| l.trim() == BUSYBOX_REF) {
            bail!("imported image not listed: {}{}", list.stdout, list.stderr);
        }
        Ok(())
    }

    /// Kills and deletes every task and container, so shims exit and mounts go.
    pub fn remove_all(&self) {
        self.remove_all_in(NAMESPACE);
    }

    /// [`Containerd::remove_all`] in containerd namespace `namespace`.
    pub fn remove_all_in(&self, namespace: &str) {
        let ctr = |args: &[&str]| self.ctr_in(namespace, args);
        let tasks = ctr(&["tasks", "ls", "-q"]);
        for id in tasks
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ctr(&["tasks", "delete", id]).success() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let containers = ctr(&["containers", "ls", "-q"]);
        for id in containers
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let _ = ctr(&["containers", "delete", id]);
        }
    }

    /// Mount points under this containerd's dir (snapshots, bundles' rootfs).
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.dir.path())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all();
        }
        // VESSEL_TEST_KEEP_LOGS=DIR: keep containerd's log (the shims' lines with their
        // times) for a look afterwards.
        if let Some(dir) = std::env::var_os("VESSEL_TEST_KEEP_LOGS") {
            let to = Path::new(&dir).join(format!(
                "containerd-{}.log",
                self.dir
                    .path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            let copied = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::copy(self.dir.path().join("containerd.log"), &to));
            match copied {
                Ok(_) => eprintln!("containerd log kept at {}", to.display()),
                Err(e) => eprintln!("keeping containerd's log in {}: {e}", to.display()),
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Never delete through a live mount: unmount what is left (deepest first) first.
        let mut left = mounts_under(self.dir.path());
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &left {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if !mounts_under(self.dir.path()).is_empty() {
            // Keep the dir rather than delete files through a mount.
            eprintln!(
                "{}: mounts left, not removing it",
                self.dir.path().display()
            );
            self.dir.disable_cleanup(true);
        }
    }
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect()
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        bail!("sha256sum printed {text:?}");
    }
    Ok(hex.to_string())
}

/// Moves `file` into `blobs/sha256/<digest>`; returns (digest, size).
fn add_blob(layout: &Path, file: &Path) -> Result<(String, u64)> {
    let hex = sha256_file(file)?;
    let size = std::fs::metadata(file)?.len();
    std::fs::rename(file, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

/// Writes an OCI image layout for busybox-static in `work` and tars it; returns the tar path.
/// The image is [`BUSYBOX_REF`] with every applet of [`APPLETS`] and `/bin/sh` as its command.
pub fn build_busybox_oci_tar(work: &Path) -> Result<PathBuf> {
    build_oci_tar(
        work,
        &BusyboxImage {
            name: BUSYBOX_REF,
            applets: APPLETS,
            entrypoint: &[],
            cmd: &["/bin/sh"],
        },
    )
}

/// A busybox-static image built by [`build_oci_tar`].
#[derive(Debug, Clone, Copy)]
pub struct BusyboxImage<'a> {
    /// Full reference, recorded as `io.containerd.image.name` (e.g. `localhost/x:latest`).
    pub name: &'a str,
    /// Applets linked to `/bin/busybox` in `/bin`.
    pub applets: &'a [&'a str],
    /// The image config's `Entrypoint` (none when empty).
    pub entrypoint: &'a [&'a str],
    /// The image config's `Cmd` (none when empty).
    pub cmd: &'a [&'a str],
}

/// A pause image for CRI pods: busybox-static's `sleep inf` as the entrypoint (it has no
/// signal handlers, so as PID 1 it ignores SIGTERM and dies at once on SIGKILL, which is how
/// containerd stops a sandbox).
pub fn pause_image(name: &str) -> BusyboxImage<'_> {
    BusyboxImage {
        name,
        applets: &["sleep"],
        entrypoint: &["/bin/sleep", "inf"],
        cmd: &[],
    }
}

/// Writes an OCI image layout (one uncompressed layer, config, manifest, index) for `image`
/// in `work` and tars it; returns the tar path.
pub fn build_oci_tar(work: &Path, image: &BusyboxImage<'_>) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox missing: apt-get install busybox-static");
    }
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    for d in [
        rootfs.join("bin"),
        rootfs.join("tmp"),
        rootfs.join("etc"),
        rootfs.join("proc"),
        rootfs.join("dev"),
        rootfs.join("sys"),
        layout.join("blobs/sha256"),
    ] {
        std::fs::create_dir_all(&d)?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in image.applets {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;

    let layer = work.join("layer.tar");
    let st = Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--mtime=@0",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar of the layer failed");
    }
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;

    let mut image_config = serde_json::json!({"Env": ["PATH=/bin"], "WorkingDir": "/"});
    if !image.entrypoint.is_empty() {
        image_config["Entrypoint"] = serde_json::json!(image.entrypoint);
    }
    if !image.cmd.is_empty() {
        image_config["Cmd"] = serde_json::json!(image.cmd);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config_file = work.join("config.json");
    std::fs::write(&config_file, serde_json::to_vec(&config)?)?;
    let (config_digest, config_size) = add_blob(&layout, &config_file)?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let manifest_file = work.join("manifest.json");
    std::fs::write(&manifest_file, serde_json::to_vec(&manifest)?)?;
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest_file)?;

    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": image.name,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let tar = if image.name == BUSYBOX_REF {
        work.join("busybox-oci.tar")
    } else {
        work.join(format!("{}-oci.tar", file_stem(image.name)))
    };
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar of the layout failed");
    }
    Ok(tar)
}

/// A file-name-safe form of an image reference (`localhost/a:b` → `localhost_a_b`).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
