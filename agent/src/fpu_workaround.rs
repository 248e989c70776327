//! A workaround for KVM-PVM hosts, where the guest kernel cannot switch AVX state.
//!
//! On KVM-PVM the guest kernel's code runs through KVM's instruction emulator, which has no
//! XSAVE/XRSTOR, so the guest kernel boots with `noxsave` and switches only the legacy
//! FXSAVE state between its processes. Guest user code runs natively, though, and the CPU's
//! CPUID and XCR0 there are the host's: programs see AVX/AVX2 as usable, and the upper
//! halves of the YMM registers then leak from one guest process into the next. glibc's
//! string functions copy through YMM registers, so data was corrupted (1 MiB of `seq`
//! output arrived with the right length and wrong bytes) and the agent itself died of
//! SIGSEGV now and then.
//!
//! The VMM puts `GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,...` on the kernel command line on
//! PVM hosts; the kernel hands it to PID 1 (the agent) as an environment variable, and the
//! agent passes it on to its setup children and to every container process (merged with a
//! `GLIBC_TUNABLES` the spec sets). That covers glibc; programs that detect AVX themselves
//! (Go's runtime, OpenSSL, Rust's `is_x86_feature_detected!`) are not covered — a real fix
//! needs the guest's YMM state switched (see guest-kernel/README.md).

pub const VAR: &str = "GLIBC_TUNABLES";

/// The tunables to hand on: the agent's own, when it is a guest's PID 1 (on a host, a
/// variable the user happened to set is not ours to spread into containers).
pub fn inherited() -> Option<String> {
    if std::process::id() != 1 {
        return None;
    }
    std::env::var(VAR).ok().filter(|v| !v.is_empty())
}

/// The variable as a setup child inherits it (`VAR=value`), if the agent has one.
pub fn child_env() -> Vec<String> {
    inherited()
        .map(|v| vec![format!("{VAR}={v}")])
        .unwrap_or_default()
}

/// Adds `ours` to a container process's environment: appended to the spec's own
/// `GLIBC_TUNABLES` (glibc reads `name=value` pairs separated by `:`), or as a new entry.
pub fn merge_into(env: &mut Vec<String>, ours: &str) {
    let prefix = format!("{VAR}=");
    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
        Some(existing) if existing.len() == prefix.len() => existing.push_str(ours),
        Some(existing) => {
            existing.push(':');
            existing.push_str(ours);
        }
        None => env.push(format!("{prefix}{ours}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "glibc.cpu.hwcaps=-AVX,-AVX2";

    #[test]
    fn added_when_the_spec_has_none() {
        let mut env = vec!["PATH=/bin".to_string()];
        merge_into(&mut env, OURS);
        assert_eq!(
            env,
            ["PATH=/bin", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2"]
        );
    }

    #[test]
    fn appended_to_the_specs_own() {
        let mut env = vec!["GLIBC_TUNABLES=glibc.malloc.check=3".to_string()];
        merge_into(&mut env, OURS);
        assert_eq!(
            env,
            ["GLIBC_TUNABLES=glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX,-AVX2"]
        );
        let mut empty = vec!["GLIBC_TUNABLES=".to_string()];
        merge_into(&mut empty, OURS);
        assert_eq!(empty, ["GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2"]);
    }

    #[test]
    fn not_inherited_outside_a_guest() {
        // Tests never run as PID 1.
        assert_eq!(inherited(), None);
        assert!(child_env().is_empty());
    }
}
