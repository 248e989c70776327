//! Which VM a container belongs to, from the CRI annotations containerd puts in the spec.
//!
//! * `io.kubernetes.cri.container-type = sandbox`: the pod's sandbox (pause) container: it
//!   starts the pod's VM; the VM is named after the container id.
//! * `io.kubernetes.cri.container-type = container` + `io.kubernetes.cri.sandbox-id = S`: an
//!   app container: it joins the VM of sandbox S (served by the same shim process).
//! * no annotations (`ctr run`): a sandbox of its own holding this one container.

use std::collections::HashMap;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The Kubernetes pod a CRI sandbox is (for metrics labels).
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";

/// Longest pod name or namespace kept (Kubernetes allows 253).
const MAX_POD_NAME: usize = 253;

/// The Kubernetes pod of a CRI sandbox spec's annotations: (name, namespace), each cut to 253
/// bytes at a character boundary; `None` without a name.
pub fn cri_pod_name(annotations: Option<&HashMap<String, String>>) -> Option<(String, String)> {
    let a = annotations?;
    let cut = |s: &str| {
        let mut end = s.len().min(MAX_POD_NAME);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    let name = a.get(SANDBOX_NAME).filter(|n| !n.is_empty())?;
    let namespace = a.get(SANDBOX_NAMESPACE).map(String::as_str).unwrap_or("");
    Some((cut(name), cut(namespace)))
}

/// The role of a container in its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRole {
    /// Starts a VM named after the container (a CRI sandbox, or a standalone container).
    SandboxOwner { standalone: bool },
    /// Runs in the VM of an existing sandbox.
    Member { sandbox_id: String },
}

/// Why the annotations do not describe a usable role.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupingError {
    #[error("container {id}: {CONTAINER_TYPE}=container without {SANDBOX_ID}")]
    MissingSandboxId { id: String },
    #[error("container {id}: unknown {CONTAINER_TYPE} {value:?}")]
    UnknownType { id: String, value: String },
    #[error("{path}: {reason}")]
    Spec { path: String, reason: String },
}

/// The role of container `id` from `<bundle>/config.json` (no file: standalone, as for a
/// `delete` after the bundle was partly removed).
pub fn role_from_bundle(
    bundle: &std::path::Path,
    id: &str,
) -> Result<ContainerRole, GroupingError> {
    let path = bundle.join("config.json");
    if !path.exists() {
        return Ok(ContainerRole::SandboxOwner { standalone: true });
    }
    let spec = oci_spec::runtime::Spec::load(&path).map_err(|e| GroupingError::Spec {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    ContainerRole::from_annotations(id, spec.annotations().as_ref())
}

impl ContainerRole {
    /// Classifies container `id` from its spec annotations.
    pub fn from_annotations(
        id: &str,
        annotations: Option<&HashMap<String, String>>,
    ) -> Result<ContainerRole, GroupingError> {
        let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
        match get(CONTAINER_TYPE) {
            None => Ok(ContainerRole::SandboxOwner { standalone: true }),
            Some("sandbox") => Ok(ContainerRole::SandboxOwner { standalone: false }),
            Some("container") => match get(SANDBOX_ID) {
                Some(sid) if !sid.is_empty() && sid != id => Ok(ContainerRole::Member {
                    sandbox_id: sid.to_string(),
                }),
                Some(sid) if sid == id => Ok(ContainerRole::SandboxOwner { standalone: true }),
                _ => Err(GroupingError::MissingSandboxId { id: id.to_string() }),
            },
            Some(other) => Err(GroupingError::UnknownType {
                id: id.to_string(),
                value: other.chars().take(64).collect(),
            }),
        }
    }

    /// The id of the sandbox (VM) this container runs in.
    pub fn sandbox_id<'a>(&'a self, container_id: &'a str) -> &'a str {
        match self {
            ContainerRole::SandboxOwner { .. } => container_id,
            ContainerRole::Member { sandbox_id } => sandbox_id,
        }
    }
}

/// The key containerd-shim's `start` groups shim processes by: one shim per sandbox.
pub fn grouping_id(
    container_id: &str,
    annotations: Option<&HashMap<String, String>>,
) -> Result<String, GroupingError> {
    Ok(ContainerRole::from_annotations(container_id, annotations)?
        .sandbox_id(container_id)
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_ctr_run_is_its_own_sandbox() {
        let r = ContainerRole::from_annotations("c1", None).unwrap();
        assert_eq!(r, ContainerRole::SandboxOwner { standalone: true });
        assert_eq!(grouping_id("c1", Some(&HashMap::new())).unwrap(), "c1");
    }

    #[test]
    fn cri_sandbox_and_members_group_together() {
        let sb = ann(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod1")]);
        assert_eq!(
            ContainerRole::from_annotations("pod1", Some(&sb)).unwrap(),
            ContainerRole::SandboxOwner { standalone: false }
        );
        let app = ann(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod1")]);
        let role = ContainerRole::from_annotations("app1", Some(&app)).unwrap();
        assert_eq!(role.sandbox_id("app1"), "pod1");
        assert_eq!(grouping_id("app1", Some(&app)).unwrap(), "pod1");
        assert_eq!(grouping_id("pod1", Some(&sb)).unwrap(), "pod1");
    }

    #[test]
    fn bad_annotations_are_errors() {
        let no_sid = ann(&[(CONTAINER_TYPE, "container")]);
        assert_eq!(
            ContainerRole::from_annotations("a", Some(&no_sid)),
            Err(GroupingError::MissingSandboxId { id: "a".into() })
        );
        let weird = ann(&[(CONTAINER_TYPE, "vm")]);
        assert!(matches!(
            ContainerRole::from_annotations("a", Some(&weird)),
            Err(GroupingError::UnknownType { .. })
        ));
    }

    #[test]
    fn the_cri_pod_name_comes_from_the_sandbox_annotations() {
        let mut a = HashMap::new();
        assert_eq!(cri_pod_name(Some(&a)), None);
        a.insert(SANDBOX_NAME.to_string(), "web-0".to_string());
        assert_eq!(
            cri_pod_name(Some(&a)),
            Some(("web-0".to_string(), String::new()))
        );
        a.insert(SANDBOX_NAMESPACE.to_string(), "shop".to_string());
        a.insert(SANDBOX_NAME.to_string(), "é".repeat(200));
        let (name, ns) = cri_pod_name(Some(&a)).expect("named");
        assert_eq!(
            (name.len(), ns.as_str()),
            (252, "shop"),
            "cut at a char boundary"
        );
        assert_eq!(cri_pod_name(None), None);
    }
}
