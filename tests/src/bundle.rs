//! OCI bundles for tests: a busybox-static rootfs in a temp dir, and an OCI spec (oci-spec's
//! default, adjusted) with builder-style helpers.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, Mount, MountBuilder, ProcessBuilder, Spec, UserBuilder,
};
use tempfile::TempDir;

/// Where busybox-static is installed on Debian.
pub const BUSYBOX: &str = "/bin/busybox";

/// A rootfs with busybox and its applets as symlinks, plus minimal /etc.
pub struct Rootfs {
    dir: TempDir,
}

impl Rootfs {
    pub fn busybox() -> Result<Rootfs> {
        Self::busybox_in(&std::env::temp_dir())
    }

    /// The same, in a temp dir under `parent`.
    pub fn busybox_in(parent: &Path) -> Result<Rootfs> {
        if !Path::new(BUSYBOX).exists() {
            bail!("{BUSYBOX} is missing: install busybox-static (apt-get install busybox-static)");
        }
        let dir = tempfile::Builder::new()
            .prefix("vessel-rootfs-")
            .tempdir_in(parent)?;
        let root = dir.path();
        for d in [
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "etc",
            "tmp",
            "proc",
            "sys",
            "dev",
            "root",
            "home/user",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        fs::copy(BUSYBOX, root.join("bin/busybox")).context("copying busybox")?;
        let list = Command::new(BUSYBOX)
            .arg("--list-full")
            .output()
            .context("busybox --list-full")?;
        if !list.status.success() {
            bail!("busybox --list-full failed");
        }
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            let link = root.join(applet);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)?;
            }
            let _ = symlink("/bin/busybox", &link);
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        )?;
        fs::write(
            root.join("etc/group"),
            "root:x:0:\nwheel:x:10:\nusers:x:100:\nuser:x:1000:\n",
        )?;
        fs::write(root.join("etc/hostname"), "rootfs\n")?;
        Ok(Rootfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A container spec being built. `to_json` gives the bytes for CreateContainerRequest.
#[derive(Clone)]
pub struct ContainerSpec {
    spec: Spec,
}

impl ContainerSpec {
    /// oci-spec's default spec (namespaces pid/net/ipc/uts/mount/cgroup, default mounts,
    /// masked and read-only paths, no-new-privileges, a few capabilities) with `rootfs` as
    /// root (read-only) and a tmpfs at /tmp.
    pub fn new(rootfs: &Path) -> ContainerSpec {
        let mut spec = Spec::default();
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(rootfs.to_path_buf());
        root.set_readonly(Some(true));
        spec.set_root(Some(root));
        spec.set_hostname(Some("vessel-test".into()));
        let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "mode=1777".to_string(),
                ])
                .build()
                .expect("tmpfs mount"),
        );
        spec.set_mounts(Some(mounts));
        ContainerSpec { spec }
    }

    /// The root read-write (as containerd gives runc a snapshot), for writes that must land
    /// in the rootfs directory.
    pub fn writable_root(mut self) -> Self {
        let mut root = self.spec.root().clone().unwrap_or_default();
        root.set_readonly(Some(false));
        self.spec.set_root(Some(root));
        self
    }

    /// Wraps a spec built elsewhere.
    pub fn from_spec(spec: Spec) -> ContainerSpec {
        ContainerSpec { spec }
    }

    fn process_mut(&mut self) -> &mut oci_spec::runtime::Process {
        if self.spec.process().is_none() {
            self.spec
                .set_process(Some(ProcessBuilder::default().build().expect("process")));
        }
        self.spec.process_mut().as_mut().expect("process set above")
    }

    fn linux_mut(&mut self) -> &mut oci_spec::runtime::Linux {
        if self.spec.linux().is_none() {
            self.spec
                .set_linux(Some(LinuxBuilder::default().build().expect("linux")));
        }
        self.spec.linux_mut().as_mut().expect("linux set above")
    }

    /// Leaves a namespace kind out of the spec (the process stays in the agent's).
    pub fn without_namespace(mut self, typ: oci_spec::runtime::LinuxNamespaceType) -> Self {
        let linux = self.linux_mut();
        let kept: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .filter(|n| n.typ() != typ)
            .cloned()
            .collect();
        linux.set_namespaces(Some(kept));
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.process_mut()
            .set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// `sh -c script`.
    pub fn shell(self, script: &str) -> Self {
        self.args(&["/bin/sh", "-c", script])
    }

    pub fn env(mut self, var: &str) -> Self {
        let p = self.process_mut();
        let mut env = p.env().clone().unwrap_or_default();
        env.push(var.to_string());
        p.set_env(Some(env));
        self
    }

    pub fn user(mut self, uid: u32, gid: u32, additional_gids: &[u32]) -> Self {
        let user = UserBuilder::default()
            .uid(uid)
            .gid(gid)
            .additional_gids(additional_gids.to_vec())
            .build()
            .expect("user");
        self.process_mut().set_user(user);
        self
    }

    /// The same capabilities in bounding, effective, permitted and inheritable; `ambient`
    /// also in ambient.
    pub fn caps(mut self, caps: &[Capability], ambient: bool) -> Self {
        let set: oci_spec::runtime::Capabilities = caps.iter().copied().collect();
        let mut b = LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set.clone())
            .inheritable(set.clone());
        b = b.ambient(if ambient { set } else { Default::default() });
        self.process_mut()
            .set_capabilities(Some(b.build().expect("caps")));
        self
    }

    pub fn no_new_privileges(mut self, nnp: bool) -> Self {
        self.process_mut().set_no_new_privileges(Some(nnp));
        self
    }

    pub fn terminal(mut self, terminal: bool) -> Self {
        self.process_mut().set_terminal(Some(terminal));
        self
    }

    pub fn seccomp(mut self, profile: LinuxSeccomp) -> Self {
        self.linux_mut().set_seccomp(Some(profile));
        self
    }

    /// Seccomp from a JSON profile text (as a runtime would receive it).
    pub fn seccomp_json(self, json: &str) -> Result<Self> {
        Ok(self.seccomp(serde_json::from_str(json).context("seccomp profile JSON")?))
    }

    /// Memory limit; swap is limited to the same total so the limit bites.
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        let mem = LinuxMemoryBuilder::default()
            .limit(bytes)
            .swap(bytes)
            .build()
            .expect("memory");
        let res = LinuxResourcesBuilder::default()
            .memory(mem)
            .build()
            .expect("resources");
        self.linux_mut().set_resources(Some(res));
        self
    }

    /// A CPU quota (`cpu.max` on cgroup v2), replacing any other resources.
    pub fn cpu_quota(mut self, quota_us: i64, period_us: u64) -> Self {
        let cpu = oci_spec::runtime::LinuxCpuBuilder::default()
            .quota(quota_us)
            .period(period_us)
            .build()
            .expect("cpu");
        let res = LinuxResourcesBuilder::default()
            .cpu(cpu)
            .build()
            .expect("resources");
        self.linux_mut().set_resources(Some(res));
        self
    }

    pub fn cgroups_path(mut self, path: &str) -> Self {
        self.linux_mut().set_cgroups_path(Some(PathBuf::from(path)));
        self
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The spec's process alone (for ExecProcess).
    pub fn process_json(&self) -> Vec<u8> {
        serde_json::to_vec(self.spec.process().as_ref().expect("process")).expect("process JSON")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.spec).expect("spec JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_what_it_says() {
        let spec = ContainerSpec::new(Path::new("/r"))
            .shell("exit 7")
            .user(1000, 1000, &[10])
            .caps(&[Capability::Chown], true)
            .memory_limit(1 << 20)
            .terminal(true);
        let json: serde_json::Value = serde_json::from_slice(&spec.to_json()).unwrap();
        assert_eq!(json["root"]["path"], "/r");
        assert_eq!(json["process"]["args"][2], "exit 7");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["additionalGids"][0], 10);
        assert_eq!(json["process"]["capabilities"]["ambient"][0], "CAP_CHOWN");
        assert_eq!(json["process"]["terminal"], true);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 1 << 20);
    }
}
