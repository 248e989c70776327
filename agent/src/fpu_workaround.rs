//! `GLIBC_TUNABLES` from the guest kernel's command line, handed on to containers.
//!
//! History: on KVM-PVM the guest kernel boots with `noxsave` (its instruction emulator has no
//! XSAVE/XRSTOR) and switched only the legacy FXSAVE state (x87, XMM0-15) between its
//! processes, while guest user code runs natively and sees the host's CPUID and XCR0 (AVX,
//! AVX2, AVX-512 usable). YMM/ZMM upper halves, ZMM16-31 and the AVX-512 mask registers then
//! leaked from one guest process into the next. The VMM used to put
//! `GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,...` on the kernel command line, which the
//! kernel gives PID 1 (the agent) as an environment variable and this module handed on to
//! every container process. That list missed AVX-512, which glibc 2.36 prefers for `memcpy`
//! and `memset` (`__memmove_avx512_unaligned_erms`, through ZMM16-31), so busybox processes
//! in containers still died of SIGSEGV; and programs that pick their own code (Go, OpenSSL,
//! Rust's `is_x86_feature_detected!`) were never covered.
//!
//! Now the VMM switches that state for the guest kernel (`vessel_vmm::kvm::xstate`,
//! guest-kernel patch 0004) and puts no `GLIBC_TUNABLES` on the command line. What is left
//! here is the plumbing, kept as a debugging aid: a `GLIBC_TUNABLES=...` given with the VMM's
//! `--cmdline` still reaches the agent's setup children and every container process (merged
//! with a `GLIBC_TUNABLES` the spec sets).

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
