//! How big a pod's VM is (Kata's static sizing, no hotplug).
//!
//! The workload's size comes from, in order:
//! 1. per-pod overrides `io.vessel.config.hypervisor.memory_mib` / `...vcpus` (the whole VM's
//!    size), honoured only for keys the config's `hypervisor.enable_annotations` names (as
//!    Kata's `enable_annotations`; containerd passes pod annotations to the sandbox spec only
//!    when its runtime's `pod_annotations` lists them). A value outside
//!    `[min_memory_mib, max_memory_mib]` / `[1, max_vcpus]` is an error, not a silent clamp.
//! 2. the sandbox annotations containerd's CRI sets from kubelet's pod resources
//!    (`io.kubernetes.cri.sandbox-memory`, bytes; `...-cpu-quota` / `...-cpu-period`);
//! 3. else the limits of the container that starts the VM (`linux.resources`: memory limit,
//!    CPU quota/period) — for `ctr run` that is the container; for a CRI pod without the
//!    annotations it is the pause container, which has none.
//!
//! For 2 and 3 the VM gets the configured base (`memory_mib`, `vcpus`: the guest's own
//! kernel and agent) plus the workload (memory rounded up to MiB, CPUs = ceil(quota/period)),
//! clamped to the configured maximum. Each size restores its own snapshot (the snapshot key
//! covers memory and vCPUs).

use std::collections::HashMap;

use oci_spec::runtime::Spec;

use crate::config::HypervisorConfig;

/// Override annotation for the VM's memory (MiB).
pub const MEMORY_ANNOTATION: &str = "io.vessel.config.hypervisor.memory_mib";
/// Override annotation for the VM's vCPUs.
pub const VCPUS_ANNOTATION: &str = "io.vessel.config.hypervisor.vcpus";
/// Prefix of every vessel override annotation.
pub const ANNOTATION_PREFIX: &str = "io.vessel.config.";
/// containerd CRI's pod memory (bytes).
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// A VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// The pod's resources cannot make a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    #[error("annotation {key} is not enabled (hypervisor.enable_annotations must list {short:?})")]
    NotEnabled { key: String, short: String },
    #[error("annotation {key} is not one vessel knows")]
    Unknown { key: String },
    #[error("annotation {key} = {value:?}: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
}

/// The VM size for a pod whose first container has `spec`.
pub fn pod_size(h: &HypervisorConfig, spec: &Spec) -> Result<VmSize, SizingError> {
    let empty = HashMap::new();
    let ann = spec.annotations().as_ref().unwrap_or(&empty);
    let (mut memory, mut vcpus) = (None, None);
    for (key, value) in ann {
        let Some(short) = key.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        let short = short.strip_prefix("hypervisor.").unwrap_or(short);
        let slot = match key.as_str() {
            MEMORY_ANNOTATION => &mut memory,
            VCPUS_ANNOTATION => &mut vcpus,
            _ => return Err(SizingError::Unknown { key: key.clone() }),
        };
        if !h.enable_annotations.iter().any(|a| a == short) {
            return Err(SizingError::NotEnabled {
                key: key.clone(),
                short: short.to_string(),
            });
        }
        *slot = Some(parse_u32(key, value)?);
    }
    let (work_mem, work_cpus) = workload(ann, spec)?;
    let memory_mib = match memory {
        Some(m) => in_range(MEMORY_ANNOTATION, m, h.min_memory_mib, h.max_memory_mib)?,
        None => h
            .memory_mib
            .saturating_add(work_mem)
            .clamp(h.min_memory_mib, h.max_memory_mib),
    };
    let vcpus = match vcpus {
        Some(v) => in_range(VCPUS_ANNOTATION, v, 1, h.max_vcpus)?,
        None => h.vcpus.saturating_add(work_cpus).clamp(1, h.max_vcpus),
    };
    Ok(VmSize { memory_mib, vcpus })
}

fn parse_u32(key: &str, value: &str) -> Result<u32, SizingError> {
    value.trim().parse().map_err(|_| SizingError::BadValue {
        key: key.to_string(),
        value: value.chars().take(64).collect(),
        reason: "not a whole number".into(),
    })
}

fn in_range(key: &str, v: u32, min: u32, max: u32) -> Result<u32, SizingError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(SizingError::BadValue {
            key: key.to_string(),
            value: v.to_string(),
            reason: format!("must be between {min} and {max} (hypervisor config)"),
        })
    }
}

/// The workload's (memory MiB, CPUs): containerd's sandbox annotations, else the spec's
/// own limits.
fn workload(ann: &HashMap<String, String>, spec: &Spec) -> Result<(u32, u32), SizingError> {
    let num = |key: &str| -> Result<Option<i64>, SizingError> {
        match ann.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| SizingError::BadValue {
                    key: key.to_string(),
                    value: v.chars().take(64).collect(),
                    reason: "not a number".into(),
                }),
        }
    };
    let cri_mem = num(CRI_SANDBOX_MEMORY)?;
    let cri_quota = num(CRI_SANDBOX_CPU_QUOTA)?;
    let cri_period = num(CRI_SANDBOX_CPU_PERIOD)?;
    let (mem_bytes, quota, period) = if cri_mem.is_some() || cri_quota.is_some() {
        (cri_mem, cri_quota, cri_period)
    } else {
        let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let mem = res
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit());
        let cpu = res.and_then(|r| r.cpu().as_ref());
        (
            mem,
            cpu.and_then(|c| c.quota()),
            cpu.and_then(|c| c.period()).map(|p| p as i64),
        )
    };
    let mem_mib = match mem_bytes {
        Some(b) if b > 0 => u32::try_from((b as u64).div_ceil(1 << 20)).unwrap_or(u32::MAX),
        _ => 0,
    };
    let cpus = match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => {
            u32::try_from((q as u64).div_ceil(p as u64)).unwrap_or(u32::MAX)
        }
        _ => 0,
    };
    Ok((mem_mib, cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(enable: &[&str]) -> HypervisorConfig {
        HypervisorConfig {
            memory_mib: 128,
            vcpus: 1,
            min_memory_mib: 64,
            max_memory_mib: 1024,
            max_vcpus: 4,
            enable_annotations: enable.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn spec(annotations: &[(&str, &str)], resources: serde_json::Value) -> Spec {
        let mut s = serde_json::to_value(Spec::default()).unwrap();
        s["annotations"] = serde_json::Value::Object(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect(),
        );
        s["linux"]["resources"] = resources;
        serde_json::from_value(s).unwrap()
    }

    const NONE: serde_json::Value = serde_json::Value::Null;

    #[test]
    fn nothing_known_is_the_base_size() {
        assert_eq!(
            pod_size(&hv(&[]), &spec(&[], NONE)).unwrap(),
            VmSize {
                memory_mib: 128,
                vcpus: 1
            }
        );
    }

    #[test]
    fn cri_sandbox_annotations_add_to_the_base() {
        let s = spec(
            &[
                (CRI_SANDBOX_MEMORY, "268435456"),
                (CRI_SANDBOX_CPU_QUOTA, "150000"),
                (CRI_SANDBOX_CPU_PERIOD, "100000"),
            ],
            // The pause's own limits are ignored when containerd gives the pod's.
            serde_json::json!({"memory": {"limit": 1}}),
        );
        assert_eq!(
            pod_size(&hv(&[]), &s).unwrap(),
            VmSize {
                memory_mib: 128 + 256,
                vcpus: 1 + 2
            }
        );
        // Quota 0 (no CPU limit, as containerd writes it) adds nothing.
        let s = spec(
            &[(CRI_SANDBOX_MEMORY, "0"), (CRI_SANDBOX_CPU_QUOTA, "0")],
            NONE,
        );
        assert_eq!(pod_size(&hv(&[]), &s).unwrap().vcpus, 1);
        assert_eq!(pod_size(&hv(&[]), &s).unwrap().memory_mib, 128);
    }

    #[test]
    fn a_standalone_containers_limits_size_its_vm_clamped() {
        let s = spec(
            &[],
            serde_json::json!({"memory": {"limit": 100 * 1024 * 1024 + 1},
                               "cpu": {"quota": 50000, "period": 100000}}),
        );
        assert_eq!(
            pod_size(&hv(&[]), &s).unwrap(),
            VmSize {
                memory_mib: 128 + 101,
                vcpus: 2
            }
        );
        let huge = spec(
            &[],
            serde_json::json!({"memory": {"limit": 1i64 << 40},
                               "cpu": {"quota": 10_000_000, "period": 100000}}),
        );
        assert_eq!(
            pod_size(&hv(&[]), &huge).unwrap(),
            VmSize {
                memory_mib: 1024,
                vcpus: 4
            }
        );
    }

    #[test]
    fn overrides_need_the_allow_list_and_a_possible_value() {
        let s = spec(&[(MEMORY_ANNOTATION, "256"), (VCPUS_ANNOTATION, "2")], NONE);
        let err = pod_size(&hv(&[]), &s).unwrap_err();
        assert!(matches!(err, SizingError::NotEnabled { .. }), "{err}");
        assert!(err.to_string().contains("enable_annotations"), "{err}");
        assert_eq!(
            pod_size(&hv(&["memory_mib", "vcpus"]), &s).unwrap(),
            VmSize {
                memory_mib: 256,
                vcpus: 2
            }
        );
        for (k, v) in [
            (MEMORY_ANNOTATION, "4096"),
            (MEMORY_ANNOTATION, "16"),
            (MEMORY_ANNOTATION, "lots"),
            (VCPUS_ANNOTATION, "0"),
            (VCPUS_ANNOTATION, "9"),
        ] {
            let err = pod_size(&hv(&["memory_mib", "vcpus"]), &spec(&[(k, v)], NONE)).unwrap_err();
            assert!(
                matches!(err, SizingError::BadValue { .. }),
                "{k}={v}: {err}"
            );
        }
        let unknown = spec(&[("io.vessel.config.hypervisor.kernel", "/x")], NONE);
        assert!(matches!(
            pod_size(&hv(&["kernel"]), &unknown),
            Err(SizingError::Unknown { .. })
        ));
        let bad_cri = spec(&[(CRI_SANDBOX_MEMORY, "1e9")], NONE);
        assert!(pod_size(&hv(&[]), &bad_cri).is_err());
    }
}
