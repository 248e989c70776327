//! The five capability sets of a container process (bounding, effective, permitted,
//! inheritable, ambient), with runc's ordering around the uid change.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability as Cap, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use super::ChildError;

fn to_caps(set: Option<&Capabilities>) -> Result<CapsHashSet, ChildError> {
    let mut out = HashSet::new();
    for c in set.into_iter().flatten() {
        let name = format!("CAP_{c}");
        let cap = Cap::from_str(&name)
            .map_err(|_| ChildError::Invalid(format!("unknown capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn caps_err(what: &'static str) -> impl Fn(caps::errors::CapsError) -> ChildError {
    move |e| ChildError::Invalid(format!("{what}: {e}"))
}

/// Drops from the bounding set what the spec does not keep. Needs CAP_SETPCAP: call before
/// changing uid.
pub fn apply_bounding(spec: Option<&LinuxCapabilities>) -> Result<(), ChildError> {
    let keep = to_caps(spec.and_then(|c| c.bounding().as_ref()))?;
    let supported = caps::runtime::thread_all_supported();
    for cap in supported {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("drop bounding capability"))?;
        }
    }
    Ok(())
}

/// Sets inheritable, effective, permitted and ambient sets. Call after the uid change (with
/// PR_SET_KEEPCAPS held across it).
pub fn apply_sets(spec: Option<&LinuxCapabilities>) -> Result<(), ChildError> {
    let supported = caps::runtime::thread_all_supported();
    let get = |s: Option<&Capabilities>| -> Result<CapsHashSet, ChildError> {
        Ok(to_caps(s)?.intersection(&supported).copied().collect())
    };
    let inh = get(spec.and_then(|c| c.inheritable().as_ref()))?;
    let eff = get(spec.and_then(|c| c.effective().as_ref()))?;
    let perm = get(spec.and_then(|c| c.permitted().as_ref()))?;
    let amb = get(spec.and_then(|c| c.ambient().as_ref()))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear ambient capabilities"))?;
    // Order: inheritable (may need CAP_SETPCAP), then effective ⊆ old permitted, then shrink
    // permitted, then ambient (each must be permitted and inheritable).
    caps::set(None, CapSet::Inheritable, &inh).map_err(caps_err("set inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &eff).map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &perm).map_err(caps_err("set permitted capabilities"))?;
    for cap in raisable_ambient(&amb, &perm, &inh) {
        caps::raise(None, CapSet::Ambient, cap).map_err(caps_err("raise ambient capability"))?;
    }
    Ok(())
}

/// The five sets as raw values for the direct exec (`crate::sys_exec`): what to drop from the
/// bounding set, the effective, permitted and inheritable masks, and the ambient
/// capabilities to raise — the same rules as [`apply_bounding`] and [`apply_sets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCaps {
    pub bounding_drop: Vec<u32>,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: Vec<u32>,
}

pub fn raw(spec: Option<&LinuxCapabilities>) -> Result<RawCaps, ChildError> {
    let supported = caps::runtime::thread_all_supported();
    let get = |s: Option<&Capabilities>| -> Result<CapsHashSet, ChildError> {
        Ok(to_caps(s)?.intersection(&supported).copied().collect())
    };
    let keep = to_caps(spec.and_then(|c| c.bounding().as_ref()))?;
    let mut bounding_drop: Vec<u32> = supported
        .iter()
        .filter(|c| !keep.contains(c))
        .map(|c| u32::from(c.index()))
        .collect();
    bounding_drop.sort_unstable();
    let mask = |set: &CapsHashSet| set.iter().fold(0u64, |m, c| m | 1u64 << c.index());
    let inh = get(spec.and_then(|c| c.inheritable().as_ref()))?;
    let perm = get(spec.and_then(|c| c.permitted().as_ref()))?;
    let amb = get(spec.and_then(|c| c.ambient().as_ref()))?;
    Ok(RawCaps {
        bounding_drop,
        effective: mask(&get(spec.and_then(|c| c.effective().as_ref()))?),
        permitted: mask(&perm),
        inheritable: mask(&inh),
        ambient: raisable_ambient(&amb, &perm, &inh)
            .iter()
            .map(|c| u32::from(c.index()))
            .collect(),
    })
}

/// The ambient capabilities the kernel lets us raise: those also permitted and inheritable.
/// Others are left out without an error, as runc does: `runc spec`'s template lists ambient
/// capabilities but no inheritable ones, and runc runs it with an empty ambient set.
fn raisable_ambient(amb: &CapsHashSet, perm: &CapsHashSet, inh: &CapsHashSet) -> Vec<Cap> {
    let mut v: Vec<Cap> = amb
        .iter()
        .filter(|c| perm.contains(c) && inh.contains(c))
        .copied()
        .collect();
    v.sort_by_key(|c| c.index());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_sets_follow_the_spec() {
        let spec: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_CHOWN"],
            "ambient": ["CAP_CHOWN", "CAP_KILL"]
        }))
        .unwrap();
        let r = raw(Some(&spec)).unwrap();
        let bit = |c: Cap| 1u64 << c.index();
        assert_eq!(r.effective, bit(Cap::CAP_KILL));
        assert_eq!(r.permitted, bit(Cap::CAP_KILL) | bit(Cap::CAP_CHOWN));
        assert_eq!(r.inheritable, bit(Cap::CAP_CHOWN));
        // Ambient only where also permitted and inheritable.
        assert_eq!(r.ambient, vec![u32::from(Cap::CAP_CHOWN.index())]);
        let kept = [Cap::CAP_KILL, Cap::CAP_CHOWN].map(|c| u32::from(c.index()));
        assert!(kept.iter().all(|k| !r.bounding_drop.contains(k)));
        let all = caps::runtime::thread_all_supported().len();
        assert_eq!(r.bounding_drop.len(), all - 2);
        // No capabilities section: every set empty, the bounding set emptied.
        let none = raw(None).unwrap();
        assert_eq!(
            (none.effective, none.permitted, none.inheritable),
            (0, 0, 0)
        );
        assert_eq!(none.bounding_drop.len(), all);
    }

    #[test]
    fn only_permitted_and_inheritable_ambient_capabilities_are_raised() {
        let set = |c: &[Cap]| c.iter().copied().collect::<CapsHashSet>();
        let amb = set(&[Cap::CAP_KILL, Cap::CAP_NET_BIND_SERVICE, Cap::CAP_CHOWN]);
        let perm = set(&[Cap::CAP_KILL, Cap::CAP_NET_BIND_SERVICE]);
        // runc spec's template: no inheritable set, so nothing ambient.
        assert!(raisable_ambient(&amb, &perm, &set(&[])).is_empty());
        let inh = set(&[Cap::CAP_NET_BIND_SERVICE, Cap::CAP_CHOWN]);
        assert_eq!(
            raisable_ambient(&amb, &perm, &inh),
            vec![Cap::CAP_NET_BIND_SERVICE]
        );
    }
}
