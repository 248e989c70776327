//! runc's command line, as podman (through conmon), Docker (through containerd's runc shim)
//! and other engines call it: youki's `liboci-cli` parses the OCI commands and runc's global
//! flags; we add vessel's own. Flags that concern host-process containers and mean nothing
//! for a VM (`--systemd-cgroup`, `--no-pivot`, `--no-new-keyring`, `--rootless`, `--criu`)
//! are accepted and ignored: the VMM's cgroup follows the spec's `cgroupsPath` whatever the
//! manager.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

#[derive(Parser, Debug)]
#[command(
    name = "vessel-runc",
    about = "vessel's OCI runtime command line: runc's contract, each container in its own VM",
    disable_version_flag = true
)]
pub struct Cli {
    /// runc's global flags: --root, --log, --log-format, --debug, --systemd-cgroup.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub rootless: Option<String>,
    /// Accepted for runc compatibility (checkpointing is not supported).
    #[arg(long)]
    pub criu: Option<String>,
    /// vessel's configuration file (default: $VESSEL_CONFIG, /etc/vessel/config.toml, then
    /// built-in). podman passes it with `--runtime-flag vessel-config=PATH`.
    #[arg(long = "vessel-config")]
    pub vessel_config: Option<PathBuf>,
    /// Print the version and the OCI spec version.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("vessel-runc").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn conmon_and_the_runc_shim_command_lines_parse() {
        // conmon's create (podman 4.3), global flags first.
        let c = parse(&[
            "--root",
            "/run/r",
            "--log",
            "/l.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "--vessel-config=/etc/v.toml",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--console-socket",
            "/c.sock",
            "abc",
        ]);
        assert_eq!(
            c.global.root.as_deref(),
            Some(std::path::Path::new("/run/r"))
        );
        assert_eq!(c.global.log_format.as_deref(), Some("json"));
        assert!(c.global.systemd_cgroup);
        assert_eq!(
            c.vessel_config.as_deref(),
            Some(std::path::Path::new("/etc/v.toml"))
        );
        let Some(Cmd::Standard(s)) = c.cmd else {
            panic!("create")
        };
        let StandardCmd::Create(cr) = *s else {
            panic!("create")
        };
        assert_eq!(cr.container_id, "abc");
        assert_eq!(
            cr.console_socket.as_deref(),
            Some(std::path::Path::new("/c.sock"))
        );
        // conmon's exec.
        let c = parse(&[
            "exec",
            "--pid-file",
            "/p",
            "--process",
            "/proc.json",
            "--detach",
            "abc",
        ]);
        let Some(Cmd::Common(cm)) = c.cmd else {
            panic!("exec")
        };
        let CommonCmd::Exec(e) = *cm else {
            panic!("exec")
        };
        assert!(e.detach && e.command.is_empty());
        // A command line exec keeps its own flags after the id.
        let c = parse(&["exec", "-t", "abc", "sh", "-c", "ls -l"]);
        let Some(Cmd::Common(cm)) = c.cmd else {
            panic!("exec")
        };
        let CommonCmd::Exec(e) = *cm else {
            panic!("exec")
        };
        assert_eq!(e.command, ["sh", "-c", "ls -l"]);
        assert!(e.tty);
        let c = parse(&["delete", "--force", "abc"]);
        assert!(
            matches!(c.cmd, Some(Cmd::Standard(s)) if matches!(*s, StandardCmd::Delete(ref d) if d.force))
        );
    }
}
