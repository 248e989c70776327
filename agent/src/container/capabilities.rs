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
