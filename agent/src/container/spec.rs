//! Reading and checking a container's OCI spec, and turning it into a creation plan.
//! Everything a caller can get wrong is reported here as INVALID_ARGUMENT, before any
//! process exists.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};

use super::cgroups::{Cgroup, CgroupLayout};
use super::child::{ChildConfig, InitConfig};
use super::mounts::CgroupMountStyle;
use super::namespaces::NsKind;
use super::seccomp;
use super::CreateContext;
use crate::error::{RequestError, RequestResult};

/// Largest spec the agent accepts.
pub const MAX_SPEC_BYTES: usize = 4 << 20;

/// What `Container::create` needs, all checked.
pub struct CreatePlan {
    pub config: ChildConfig,
    pub cgroup: Cgroup,
    pub resources: Option<LinuxResources>,
    pub new_pid_ns: bool,
    pub pid_ns_path: Option<PathBuf>,
    pub console_size: Option<(u16, u16)>,
}

/// Container ids: the shared rule of [`vessel_protocol::ids::check_id`] (they become cgroup
/// and file names).
pub fn check_id(id: &str) -> RequestResult<()> {
    vessel_protocol::ids::check_name("container id", id)
        .map_err(|e| RequestError::invalid(e.to_string()))
}

pub fn plan(id: &str, spec_json: &[u8], ctx: &CreateContext<'_>) -> RequestResult<CreatePlan> {
    if spec_json.len() > MAX_SPEC_BYTES {
        return Err(RequestError::invalid(format!(
            "OCI spec is {} bytes, over the {MAX_SPEC_BYTES} limit",
            spec_json.len()
        )));
    }
    let spec: Spec = serde_json::from_slice(spec_json)
        .map_err(|e| RequestError::invalid(format!("malformed OCI spec: {e}")))?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| RequestError::invalid("OCI spec has no process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(RequestError::invalid("process.args is empty"));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| RequestError::invalid("OCI spec has no root"))?;
    let rootfs = root.path().clone();
    if !rootfs.is_absolute() {
        return Err(RequestError::invalid(format!(
            "root.path {} must be absolute",
            rootfs.display()
        )));
    }
    if !rootfs.is_dir() {
        return Err(RequestError::invalid(format!(
            "root.path {} is not a directory",
            rootfs.display()
        )));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| RequestError::invalid("OCI spec has no linux section"))?;

    let mut new_namespaces = Vec::new();
    let mut join_namespaces = Vec::new();
    let mut new_pid_ns = false;
    let mut pid_ns_path = None;
    for ns in linux.namespaces().iter().flatten() {
        let kind = match NsKind::from_oci(ns.typ()) {
            Some(k) => k,
            None if ns.typ() == LinuxNamespaceType::User => {
                return Err(RequestError::invalid("user namespaces are not supported"));
            }
            None => {
                return Err(RequestError::invalid(format!(
                    "namespace {:?} is not supported",
                    ns.typ()
                )))
            }
        };
        match (kind, ns.path()) {
            (NsKind::Pid, Some(p)) => pid_ns_path = Some(p.clone()),
            (NsKind::Pid, None) => new_pid_ns = true,
            (k, Some(p)) => join_namespaces.push((k, p.clone())),
            (k, None) => new_namespaces.push(k),
        }
    }
    // The pod's namespaces replace whatever the spec says for their kinds.
    for (kind, path) in ctx.pod_join {
        new_namespaces.retain(|k| k != kind);
        join_namespaces.retain(|(k, _)| k != kind);
        if *kind == NsKind::Pid {
            new_pid_ns = false;
            pid_ns_path = Some(path.clone());
        } else {
            join_namespaces.push((*kind, path.clone()));
        }
    }
    if !new_namespaces.contains(&NsKind::Mount) {
        return Err(RequestError::invalid("a new mount namespace is required"));
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(RequestError::invalid(format!(
                "mount destination {} is not absolute",
                m.destination().display()
            )));
        }
    }

    // A built-in pause never runs the spec's program; it loads a filter of its own.
    let seccomp = match linux.seccomp().as_ref().filter(|_| !ctx.builtin_pause) {
        Some(profile) => {
            let (compiled, unknown) = seccomp::compile(profile)
                .map_err(|e| RequestError::invalid(format!("seccomp profile: {e}")))?;
            if !unknown.is_empty() {
                let shown: Vec<&str> = unknown.iter().take(8).map(String::as_str).collect();
                log::warn!("container {id}: seccomp profile names {} syscalls unknown on x86_64, skipped: {shown:?}", unknown.len());
            }
            Some(compiled)
        }
        None => None,
    };

    let cgroup = ctx
        .cgroups
        .cgroup_for(linux.cgroups_path().as_deref(), id)
        .map_err(|e| RequestError::invalid(format!("cgroupsPath: {e}")))?;
    let cgroup_style = match ctx.cgroups.layout() {
        CgroupLayout::V2 { root_flags, .. } => CgroupMountStyle::V2 {
            root_flags: root_flags.clone(),
        },
        CgroupLayout::V1 { hierarchies } => {
            let mut dirs: Vec<(String, String)> = Vec::new();
            for (ctrl, (mount, _)) in hierarchies {
                let name = mount
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| ctrl.clone());
                match dirs.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, opts)) => {
                        opts.push(',');
                        opts.push_str(ctrl);
                    }
                    None => dirs.push((name, ctrl.clone())),
                }
            }
            CgroupMountStyle::V1(dirs)
        }
    };
    let console_size = process
        .console_size()
        .map(|b| (b.height() as u16, b.width() as u16));
    let init = InitConfig {
        spec: spec.clone(),
        rootfs,
        resolv_conf: ctx.resolv_conf.map(|p| p.to_path_buf()),
        cgroup_style,
        new_namespaces: new_namespaces
            .into_iter()
            .filter(|k| *k != NsKind::Pid)
            .collect(),
        join_namespaces,
        builtin_pause: ctx.builtin_pause,
    };
    Ok(CreatePlan {
        config: ChildConfig {
            process,
            seccomp,
            init: Some(init),
            join: Vec::new(),
            wait_for_start: true,
            nice: crate::priority::container_nice(),
        },
        cgroup,
        resources: linux.resources().clone(),
        new_pid_ns,
        pid_ns_path,
        console_size,
    })
}

#[cfg(test)]
mod tests {
    use super::super::cgroup_placement::CgroupPlacement;
    use super::*;
    use std::path::Path;

    fn ctx_cgroups() -> CgroupPlacement {
        let layout = CgroupLayout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
            own: PathBuf::from("/"),
            root_flags: String::new(),
        };
        CgroupPlacement::new(layout, true)
    }

    fn spec_with(root: &Path, patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut spec = serde_json::to_value(Spec::default()).unwrap();
        spec["root"]["path"] = serde_json::Value::String(root.display().to_string());
        patch(&mut spec);
        serde_json::to_vec(&spec).unwrap()
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("abc-1.2_x").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_specs_are_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = ctx_cgroups();
        let ctx = CreateContext {
            builtin_pause: false,
            cgroups: &cgroups,
            resolv_conf: None,
            pod_join: &[],
        };
        let code = |json: &[u8]| plan("c", json, &ctx).err().map(|e| e.code);
        assert_eq!(code(b"{not json"), Some(ttrpc::Code::INVALID_ARGUMENT));
        assert_eq!(
            code(&spec_with(Path::new("relative"), |_| {})),
            Some(ttrpc::Code::INVALID_ARGUMENT)
        );
        assert_eq!(
            code(&spec_with(Path::new("/no/such/dir"), |_| {})),
            Some(ttrpc::Code::INVALID_ARGUMENT)
        );
        let user_ns = spec_with(dir.path(), |s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "user"}));
        });
        assert_eq!(code(&user_ns), Some(ttrpc::Code::INVALID_ARGUMENT));
        let bad_seccomp = spec_with(dir.path(), |s| {
            s["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]});
        });
        let err = plan("c", &bad_seccomp, &ctx).err().unwrap();
        assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.message.contains("seccomp"), "{}", err.message);
        let ok = plan("c", &spec_with(dir.path(), |_| {}), &ctx).unwrap();
        assert!(ok.new_pid_ns);
        assert!(ok.config.wait_for_start);
    }

    #[test]
    fn pod_namespaces_replace_the_specs_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = ctx_cgroups();
        let pod_join = vec![
            (NsKind::Net, PathBuf::from("/a/pod/ns/net")),
            (NsKind::Ipc, PathBuf::from("/a/pod/ns/ipc")),
            (NsKind::Pid, PathBuf::from("/a/pod/ns/pid")),
        ];
        let ctx = CreateContext {
            builtin_pause: false,
            cgroups: &cgroups,
            resolv_conf: None,
            pod_join: &pod_join,
        };
        // The default spec asks for new pid, network, ipc, uts and mount namespaces.
        let p = plan("c", &spec_with(dir.path(), |_| {}), &ctx).unwrap();
        assert!(!p.new_pid_ns);
        assert_eq!(p.pid_ns_path, Some(PathBuf::from("/a/pod/ns/pid")));
        let init = p.config.init.as_ref().unwrap();
        assert_eq!(
            init.join_namespaces,
            vec![
                (NsKind::Net, PathBuf::from("/a/pod/ns/net")),
                (NsKind::Ipc, PathBuf::from("/a/pod/ns/ipc")),
            ]
        );
        assert!(init.new_namespaces.contains(&NsKind::Uts));
        assert!(init.new_namespaces.contains(&NsKind::Mount));
        assert!(!init.new_namespaces.contains(&NsKind::Net));
        assert!(!init.new_namespaces.contains(&NsKind::Ipc));
    }
}
