//! A container's namespaces, from what containerd wrote (host paths) to what the guest does.
//!
//! containerd writes host objects into the spec: the pause container's network namespace is
//! CNI's (`/var/run/netns/cni-...`), and each member names the pod's namespaces as those of
//! the sandbox's task (`/proc/<task pid>/ns/<kind>`; vessel reports the VMM's pid as the
//! task pid). None of these exist in the guest. The rules:
//!
//! * **CRI sandbox (pause)**: every namespace path is dropped (the guest makes new ones, but
//!   for the network: see below), and the agent is told the container is the pod's sandbox:
//!   its ipc, uts, net and pid namespaces become the pod's. A pod that asks for the node's network, IPC, UTS or PID
//!   namespace (CRI `NODE` mode: the entry is missing) is refused: a VM cannot share the
//!   host's namespaces, and giving it the guest's would pretend otherwise.
//! * **CRI member**: an entry `/proc/<P>/ns/<kind>` with P = the pod's task pid and the
//!   entry's own kind becomes "join the pod's <kind>"; any other path names no pod and is
//!   refused. An entry without a path stays new (CRI `CONTAINER` mode, e.g. for pid); a
//!   missing net/ipc/uts/pid entry (`NODE`) is refused as above.
//! * **standalone** (`ctr run`): paths dropped (new namespaces in the guest), missing entries
//!   inherit the guest's, nothing is shared.
//!
//! **The VM is the pod's network namespace.** The first container of a pod (CRI sandbox or
//! standalone) gets no network namespace of its own: it stays in the guest's root one, and
//! members join it. When the runtime wired the pod's network (`crate::network`), the NIC is
//! there (Kata's rule); when it did not, the guest has `lo` only, which is all a fresh
//! namespace would have had. A new network namespace is also the dearest one to make and tear
//! down on a KVM-PVM host (~0.45 s of a container's create, measured with `vm_run`). The CNI
//! netns path of a sandbox is kept ([`Translated::host_netns`]): it is where the pod's network
//! lives on the host. (The host-agent test backend runs containers on the host itself: there
//! the network namespace stays new, as with runc.)

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use vessel_protocol::agent::PodNamespace;

/// The container's role in its pod, as far as namespaces go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsRole {
    Standalone,
    /// The pod's CRI sandbox (pause) container.
    Sandbox,
    /// A CRI container of the pod whose task pid (what containerd wrote into paths) is given.
    Member {
        pod_task_pid: u32,
    },
}

/// The spec's namespaces cannot be given to the guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamespaceError {
    #[error("container {container}: the pod asks for the node's {kind} namespace ({cri_name}); a VM cannot share the host's namespaces")]
    NodeNamespace {
        container: String,
        kind: &'static str,
        cri_name: &'static str,
    },
    #[error("container {container}: {kind} namespace path {path} names no namespace of this pod (its task pid is {pod_task_pid})")]
    NotOfPod {
        container: String,
        kind: &'static str,
        path: PathBuf,
        pod_task_pid: u32,
    },
    #[error("container {container}: {kind} namespace path {path} cannot be joined in a VM")]
    Unsupported {
        container: String,
        kind: &'static str,
        path: PathBuf,
    },
}

/// What the agent is told about the container's namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translated {
    pub pod_sandbox: bool,
    /// The sandbox runs the agent's built-in pause (set by the pod from its configuration).
    pub builtin_pause: bool,
    pub pod_namespaces: Vec<PodNamespace>,
    /// The host network namespace a sandbox's spec named (CNI's).
    pub host_netns: Option<PathBuf>,
}

/// The kinds a pod shares: (OCI type, name under /proc/<pid>/ns, API kind, CRI's NODE name).
const POD_KINDS: [(LinuxNamespaceType, &str, PodNamespace, &str); 4] = [
    (
        LinuxNamespaceType::Network,
        "net",
        PodNamespace::POD_NAMESPACE_NET,
        "hostNetwork",
    ),
    (
        LinuxNamespaceType::Ipc,
        "ipc",
        PodNamespace::POD_NAMESPACE_IPC,
        "hostIPC",
    ),
    (
        LinuxNamespaceType::Uts,
        "uts",
        PodNamespace::POD_NAMESPACE_UTS,
        "hostNetwork (UTS)",
    ),
    (
        LinuxNamespaceType::Pid,
        "pid",
        PodNamespace::POD_NAMESPACE_PID,
        "hostPID",
    ),
];

fn kind_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Time => "time",
    }
}

/// `/proc/<pid>/ns/<name>` → (pid, name).
fn parse_proc_ns(path: &std::path::Path) -> Option<(u32, String)> {
    let s = path.to_str()?;
    let rest = s.strip_prefix("/proc/")?;
    let (pid, name) = rest.split_once("/ns/")?;
    if name.contains('/') || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((pid.parse().ok()?, name.to_string()))
}

/// The host network namespace a pod's first container names (CNI's), if any.
pub fn host_netns(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Rewrites `spec`'s namespaces for the guest (see the module docs) and says what the agent
/// must share. `machine_net`: the machine's root network namespace is the pod's alone (a
/// VM's; not the host agent's, which is the host's).
pub fn translate(
    spec: &mut Spec,
    container: &str,
    role: NsRole,
    machine_net: bool,
) -> Result<Translated, NamespaceError> {
    let mut out = Translated {
        pod_sandbox: role == NsRole::Sandbox,
        ..Default::default()
    };
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(out);
    };
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if role != NsRole::Standalone {
        for (typ, _, _, cri_name) in POD_KINDS {
            if !namespaces.iter().any(|n| n.typ() == typ) {
                return Err(NamespaceError::NodeNamespace {
                    container: container.to_string(),
                    kind: kind_name(typ),
                    cri_name,
                });
            }
        }
    }
    let mut kept = Vec::with_capacity(namespaces.len());
    for mut ns in namespaces.drain(..) {
        let typ = ns.typ();
        let owner = matches!(role, NsRole::Standalone | NsRole::Sandbox);
        if owner && typ == LinuxNamespaceType::Network {
            out.host_netns = ns.path().clone();
            if machine_net {
                // The guest's own namespace (module docs).
                continue;
            }
        }
        let Some(path) = ns.path().clone() else {
            kept.push(ns);
            continue;
        };
        match role {
            NsRole::Standalone | NsRole::Sandbox => {
                ns.set_path(None);
                kept.push(ns);
            }
            NsRole::Member { pod_task_pid } => {
                let Some((_, proc_name, api, _)) = POD_KINDS.iter().find(|(t, _, _, _)| *t == typ)
                else {
                    return Err(NamespaceError::Unsupported {
                        container: container.to_string(),
                        kind: kind_name(typ),
                        path,
                    });
                };
                match parse_proc_ns(&path) {
                    Some((pid, name)) if pid == pod_task_pid && name == *proc_name => {
                        out.pod_namespaces.push(*api);
                        // The agent joins the pod's; the entry stays (without a path) so the
                        // spec still says this kind is not the guest's own.
                        ns.set_path(None);
                        kept.push(ns);
                    }
                    _ => {
                        return Err(NamespaceError::NotOfPod {
                            container: container.to_string(),
                            kind: kind_name(typ),
                            path,
                            pod_task_pid,
                        })
                    }
                }
            }
        }
    }
    linux.set_namespaces(Some(kept));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        let mut s = serde_json::to_value(Spec::default()).unwrap();
        s["linux"]["namespaces"] = namespaces;
        serde_json::from_value(s).unwrap()
    }

    fn paths(s: &Spec) -> Vec<(String, Option<String>)> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    kind_name(n.typ()).to_string(),
                    n.path().as_ref().map(|p| p.display().to_string()),
                )
            })
            .collect()
    }

    fn pod_sandbox_spec() -> Spec {
        spec(serde_json::json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1234"}
        ]))
    }

    fn kinds(s: &Spec) -> Vec<String> {
        paths(s).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn sandbox_gets_new_namespaces_but_the_guests_network_and_keeps_the_cni_netns() {
        let mut s = pod_sandbox_spec();
        assert_eq!(
            host_netns(&s),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        let t = translate(&mut s, "pause", NsRole::Sandbox, true).unwrap();
        assert!(t.pod_sandbox);
        assert!(t.pod_namespaces.is_empty());
        assert_eq!(t.host_netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
        assert!(
            paths(&s).iter().all(|(_, p)| p.is_none()),
            "{:?}",
            paths(&s)
        );
        assert_eq!(
            kinds(&s),
            ["pid", "ipc", "uts", "mnt"],
            "no network namespace of its own, the others new"
        );
    }

    #[test]
    fn a_standalone_container_stays_in_the_guests_network_namespace() {
        // ctr run's default: a new network namespace without a path.
        let mut plain = spec(serde_json::json!([{"type": "network"}, {"type": "mount"}]));
        assert_eq!(host_netns(&plain), None);
        let mut guest = plain.clone();
        let t = translate(&mut guest, "c1", NsRole::Standalone, true).unwrap();
        assert_eq!(t.host_netns, None);
        assert_eq!(kinds(&guest), ["mnt"]);
        // The host agent's machine is the host: a new namespace there, as with runc.
        translate(&mut plain, "c1", NsRole::Standalone, false).unwrap();
        assert_eq!(kinds(&plain), ["net", "mnt"]);
    }

    #[test]
    fn members_join_the_pods_namespaces() {
        let mut s = spec(serde_json::json!([
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/proc/4242/ns/net"}
        ]));
        let t = translate(&mut s, "app", NsRole::Member { pod_task_pid: 4242 }, true).unwrap();
        assert!(!t.pod_sandbox);
        assert_eq!(
            t.pod_namespaces,
            vec![
                PodNamespace::POD_NAMESPACE_PID,
                PodNamespace::POD_NAMESPACE_IPC,
                PodNamespace::POD_NAMESPACE_UTS,
                PodNamespace::POD_NAMESPACE_NET
            ]
        );
        assert!(paths(&s).iter().all(|(_, p)| p.is_none()));
        // CRI's CONTAINER mode for pid: a new pid namespace, the rest shared.
        let mut s = spec(serde_json::json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/proc/4242/ns/net"}
        ]));
        let t = translate(&mut s, "app", NsRole::Member { pod_task_pid: 4242 }, true).unwrap();
        assert_eq!(t.pod_namespaces.len(), 3);
        assert!(!t.pod_namespaces.contains(&PodNamespace::POD_NAMESPACE_PID));
    }

    #[test]
    fn paths_that_name_no_pod_are_refused() {
        for (path, typ) in [
            ("/proc/999/ns/net", "network"),  // another process
            ("/proc/4242/ns/ipc", "network"), // the wrong kind
            ("/var/run/netns/other", "network"),
            ("/proc/4242/ns/../../1/ns/net", "network"),
        ] {
            let mut s = spec(serde_json::json!([
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": typ, "path": path}
            ]));
            let err =
                translate(&mut s, "app", NsRole::Member { pod_task_pid: 4242 }, true).unwrap_err();
            assert!(
                matches!(err, NamespaceError::NotOfPod { .. }),
                "{path}: {err}"
            );
            assert!(err.to_string().contains(path), "{err}");
        }
        let mut s = spec(serde_json::json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"},
            {"type": "mount", "path": "/proc/4242/ns/mnt"}
        ]));
        assert!(matches!(
            translate(&mut s, "app", NsRole::Member { pod_task_pid: 4242 }, true),
            Err(NamespaceError::Unsupported { .. })
        ));
    }

    #[test]
    fn node_namespaces_are_refused_in_pods_only() {
        // hostNetwork: no network (and no uts) entry.
        let host_net = || {
            spec(serde_json::json!([
                {"type": "pid"}, {"type": "ipc"}, {"type": "mount"}
            ]))
        };
        let err = translate(&mut host_net(), "pause", NsRole::Sandbox, true).unwrap_err();
        assert!(
            err.to_string().contains("hostNetwork") && err.to_string().contains("VM"),
            "{err}"
        );
        let err = translate(
            &mut host_net(),
            "app",
            NsRole::Member { pod_task_pid: 1 },
            true,
        )
        .unwrap_err();
        assert!(matches!(err, NamespaceError::NodeNamespace { .. }));
        // ctr run --net-host: the guest's own network namespace, as before.
        let t = translate(&mut host_net(), "c1", NsRole::Standalone, true).unwrap();
        assert_eq!(t, Translated::default());
    }

    #[test]
    fn standalone_drops_paths_and_shares_nothing() {
        let mut s = pod_sandbox_spec();
        let t = translate(&mut s, "c1", NsRole::Standalone, true).unwrap();
        assert!(!t.pod_sandbox);
        assert!(t.pod_namespaces.is_empty());
        assert_eq!(t.host_netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
        assert!(paths(&s).iter().all(|(_, p)| p.is_none()));
        assert!(!kinds(&s).contains(&"net".to_string()), "{:?}", kinds(&s));
    }
}
