//! Firecracker beside vessel-vmm: the same kernel, initrd, memory, vCPUs and kernel command
//! line, and a hybrid vsock as vessel-vmm has (Firecracker's own design, the same `CONNECT`
//! protocol), so the agent's `Check` can be timed the same way. Firecracker is built from its
//! public source and never committed: the harness takes `--firecracker PATH`, and without it
//! the series says it was not run.

use std::path::Path;

/// Firecracker's `--config-file` for one boot (no API socket).
pub fn config_json(
    kernel: &Path,
    initrd: &Path,
    mem_mib: u32,
    vcpus: u32,
    boot_args: &str,
    vsock_uds: &Path,
) -> String {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": boot_args,
        },
        "drives": [],
        "machine-config": {
            "vcpu_count": vcpus,
            "mem_size_mib": mem_mib,
            "smt": false,
        },
        "vsock": {
            "guest_cid": 3,
            "uds_path": vsock_uds,
        },
    })
    .to_string()
}

/// The command line: the config file, no API server, warnings only in its log.
pub fn args(config: &Path) -> Vec<String> {
    vec![
        "--no-api".into(),
        "--config-file".into(),
        config.display().to_string(),
        "--level".into(),
        "Warning".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_same_guest_as_vessel_vmm() {
        let text = config_json(
            Path::new("/k/vmlinux"),
            Path::new("/k/initrd.cpio"),
            128,
            1,
            "console=ttyS0 vessel.log=info",
            Path::new("/w/fc.sock"),
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["boot-source"]["kernel_image_path"], "/k/vmlinux");
        assert_eq!(v["boot-source"]["initrd_path"], "/k/initrd.cpio");
        assert_eq!(
            v["boot-source"]["boot_args"],
            "console=ttyS0 vessel.log=info"
        );
        assert_eq!(v["machine-config"]["mem_size_mib"], 128);
        assert_eq!(v["machine-config"]["vcpu_count"], 1);
        assert_eq!(v["vsock"]["uds_path"], "/w/fc.sock");
        assert_eq!(
            args(Path::new("/w/fc.json")),
            [
                "--no-api",
                "--config-file",
                "/w/fc.json",
                "--level",
                "Warning"
            ]
        );
    }
}
