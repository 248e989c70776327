//! Entry point of the `seccomp_compile` fuzz target (`fuzz/`): arbitrary JSON as an OCI
//! seccomp profile into [`compile`]. Checks: nothing panics; a compiled program is valid
//! classic BPF as the kernel's checker sees it (known opcodes, loads inside `seccomp_data`,
//! every jump in range, ends in a return, at most 4096 instructions, only known actions);
//! and it means what the profile says: run on probes (the profile's syscalls, arguments at
//! and around its comparison values, other ABIs), it returns what a direct evaluation of
//! the profile under the documented semantics returns.
//!
//! Compiled for tests and with the `fuzzing` feature only; `corpus_tests` replays
//! `fuzz/corpus/seccomp_compile/` in `cargo test`.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use crate::container::seccomp::{compile, syscall_number, Insn};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_DATA_LEN: u32 = 64;
const MAX_INSNS: usize = 4096;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// Most probes one profile gets.
const MAX_PROBES: usize = 2048;

/// What a run reached (for tests of the harness and the seeds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub parsed: bool,
    pub compiled: bool,
    pub insns: usize,
    pub probes: usize,
}

/// Runs one input (any bytes).
pub fn seccomp(data: &[u8]) -> Summary {
    let mut s = Summary::default();
    let Ok(profile) = serde_json::from_slice::<LinuxSeccomp>(data) else {
        return s;
    };
    s.parsed = true;
    let Ok((compiled, _unknown)) = compile(&profile) else {
        return s;
    };
    s.compiled = true;
    s.insns = compiled.program.len();
    if let Err(e) = check_program(&compiled.program) {
        panic!(
            "compiled an invalid BPF program: {e}\n{:?}",
            compiled.program
        );
    }
    for (arch, nr, args) in probes(&profile) {
        let got = run_bpf(&compiled.program, arch, nr, args);
        let want = evaluate(&profile, arch, nr, args);
        assert_eq!(
            got, want,
            "program returns {got:#x}, the profile says {want:#x} for arch {arch:#x} \
             syscall {nr} args {args:x?}"
        );
        s.probes += 1;
    }
    s
}

/// The kernel's classic-BPF checks (`bpf_check_classic`, `seccomp_check_filter`) for the
/// instructions the compiler emits, and the return actions seccomp knows.
pub fn check_program(prog: &[Insn]) -> Result<(), String> {
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return Err(format!("{} instructions", prog.len()));
    }
    let len = prog.len();
    for (pc, i) in prog.iter().enumerate() {
        let in_range = |off: usize| pc + 1 + off < len;
        match i.code {
            LD_W_ABS => {
                if i.k % 4 != 0 || i.k + 4 > SECCOMP_DATA_LEN {
                    return Err(format!("{pc}: load at offset {}", i.k));
                }
            }
            ALU_AND_K => {}
            JMP_JA => {
                if !in_range(i.k as usize) {
                    return Err(format!("{pc}: ja {} out of range", i.k));
                }
            }
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                if !in_range(usize::from(i.jt)) || !in_range(usize::from(i.jf)) {
                    return Err(format!("{pc}: jump {}/{} out of range", i.jt, i.jf));
                }
            }
            RET_K => {
                let action = i.k & 0xffff_0000;
                let known = [
                    RET_KILL_THREAD,
                    RET_KILL_PROCESS,
                    RET_TRAP,
                    RET_ERRNO,
                    RET_TRACE,
                    RET_LOG,
                    RET_ALLOW,
                ];
                if !known.contains(&action) {
                    return Err(format!("{pc}: return {:#x}", i.k));
                }
            }
            c => return Err(format!("{pc}: opcode {c:#x}")),
        }
        if i.code != JMP_JA && !matches!(i.code, JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K) {
            // Only jumps carry offsets.
            if i.jt != 0 || i.jf != 0 {
                return Err(format!("{pc}: offsets on a non-jump"));
            }
        }
    }
    if prog[len - 1].code != RET_K {
        return Err("the last instruction is not a return".into());
    }
    Ok(())
}

/// Runs a checked program on one `seccomp_data` (little-endian x86_64).
pub fn run_bpf(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; SECCOMP_DATA_LEN as usize];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let (mut a, mut pc) = (0u32, 0usize);
    // Jumps only go forward: at most one step per instruction.
    for _ in 0..=prog.len() {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let at = i.k as usize;
                a = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            }
            ALU_AND_K => a &= i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let t = match i.code {
                    JMP_JEQ_K => a == i.k,
                    JMP_JGT_K => a > i.k,
                    _ => a >= i.k,
                };
                pc += usize::from(if t { i.jt } else { i.jf });
            }
            _ => return i.k,
        }
    }
    unreachable!("a checked program always returns")
}

fn action_code(action: LinuxSeccompAction, errno: Option<u32>) -> u32 {
    let data = errno.unwrap_or(libc::EPERM as u32);
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        // Refused by `compile`: never evaluated.
        LinuxSeccompAction::ScmpActNotify => u32::MAX,
    }
}

/// One condition: (argument index, operator, value, valueTwo).
type Cond = (usize, LinuxSeccompOperator, u64, u64);

fn holds(c: &Cond, args: &[u64; 6]) -> bool {
    use LinuxSeccompOperator as Op;
    let (idx, op, v, w) = *c;
    let a = args[idx];
    match op {
        Op::ScmpCmpEq => a == v,
        Op::ScmpCmpNe => a != v,
        Op::ScmpCmpGt => a > v,
        Op::ScmpCmpGe => a >= v,
        Op::ScmpCmpLt => a < v,
        Op::ScmpCmpLe => a <= v,
        Op::ScmpCmpMaskedEq => a & v == w,
    }
}

/// The rules of `profile` for syscall `nr`, in profile order: (ORed sets of ANDed
/// conditions, action). runc: when two conditions test the same argument, every condition
/// of the rule becomes a rule of its own.
fn rules_for(profile: &LinuxSeccomp, nr: u32) -> Vec<(Vec<Vec<Cond>>, u32)> {
    let mut out = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let conds: Vec<Cond> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| (a.index(), a.op(), a.value(), a.value_two().unwrap_or(0)))
            .collect();
        let mut per_index = [0usize; 6];
        conds.iter().for_each(|c| per_index[c.0] += 1);
        let sets = if per_index.iter().any(|&n| n > 1) {
            conds.iter().map(|c| vec![*c]).collect()
        } else {
            vec![conds]
        };
        let action = action_code(rule.action(), rule.errno_ret());
        for name in rule.names() {
            if syscall_number(name) == Some(nr) {
                out.push((sets.clone(), action));
            }
        }
    }
    out
}

/// What the profile says for one system call, evaluated directly.
pub fn evaluate(profile: &LinuxSeccomp, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    if arch != AUDIT_ARCH_X86_64 || nr >= X32_SYSCALL_BIT {
        return RET_KILL_THREAD;
    }
    let default = action_code(profile.default_action(), profile.default_errno_ret());
    let rules = rules_for(profile, nr);
    // Conditional rules first, in profile order; then the first unconditional one.
    for (sets, action) in &rules {
        for set in sets {
            if !set.is_empty() && set.iter().all(|c| holds(c, &args)) {
                return *action;
            }
        }
    }
    rules
        .iter()
        .find(|(sets, _)| sets.iter().any(Vec::is_empty))
        .map_or(default, |(_, a)| *a)
}

/// Probes for the profile: each syscall it names with arguments at, just off and around
/// its comparison values; a syscall it does not name; other ABIs.
fn probes(profile: &LinuxSeccomp) -> Vec<(u32, u32, [u64; 6])> {
    let mut nrs: Vec<u32> = profile
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names().iter())
        .filter_map(|n| syscall_number(n))
        .collect();
    nrs.sort_unstable();
    nrs.dedup();
    let mut out = vec![
        (AUDIT_ARCH_I386, nrs.first().copied().unwrap_or(0), [0; 6]),
        (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1, [0; 6]),
        (AUDIT_ARCH_X86_64, 335, [0; 6]),
    ];
    for nr in nrs {
        let conds: Vec<Cond> = rules_for(profile, nr)
            .into_iter()
            .flat_map(|(sets, _)| sets.into_iter().flatten())
            .collect();
        out.push((AUDIT_ARCH_X86_64, nr, [0; 6]));
        out.push((AUDIT_ARCH_X86_64, nr, [u64::MAX; 6]));
        // Every condition satisfied as EQ would be.
        let mut all = [0u64; 6];
        conds.iter().for_each(|c| all[c.0] = c.2);
        out.push((AUDIT_ARCH_X86_64, nr, all));
        for c in &conds {
            let (v, w) = (c.2, c.3);
            for x in [
                v,
                v.wrapping_sub(1),
                v.wrapping_add(1),
                v ^ (1 << 32),
                v.wrapping_add(1 << 32),
                w,
                v & w,
                !v,
            ] {
                let mut args = all;
                args[c.0] = x;
                out.push((AUDIT_ARCH_X86_64, nr, args));
            }
        }
        if out.len() > MAX_PROBES {
            break;
        }
    }
    out.truncate(MAX_PROBES);
    out
}

/// The committed seeds: (file name, profile JSON).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let s = |name, json: &str| (name, json.as_bytes().to_vec());
    vec![
        s(
            "allowlist",
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
"architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
"syscalls":[
{"names":["read","write","openat","close","exit_group","futex","mmap","brk"],"action":"SCMP_ACT_ALLOW"},
{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[
 {"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":8,"op":"SCMP_CMP_EQ"},
 {"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
{"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[
 {"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
{"names":["socket"],"action":"SCMP_ACT_ERRNO","errnoRet":97,"args":[
 {"index":0,"value":16,"op":"SCMP_CMP_EQ"},{"index":2,"value":9,"op":"SCMP_CMP_EQ"}]},
{"names":["socket"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ),
        s(
            "denylist",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG",
"SECCOMP_FILTER_FLAG_SPEC_ALLOW"],"syscalls":[
{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"},
{"names":["uname"],"action":"SCMP_ACT_KILL_PROCESS"},
{"names":["getpid"],"action":"SCMP_ACT_TRAP"},
{"names":["getppid"],"action":"SCMP_ACT_LOG"},
{"names":["ptrace"],"action":"SCMP_ACT_TRACE","errnoRet":3},
{"names":["kexec_load","no_such_call"],"action":"SCMP_ACT_KILL"}]}"#,
        ),
        s(
            "comparisons",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
{"names":["ioctl"],"action":"SCMP_ACT_ERRNO","args":[
 {"index":1,"value":4294967301,"op":"SCMP_CMP_GT"},{"index":2,"value":7,"op":"SCMP_CMP_LE"}]},
{"names":["fcntl"],"action":"SCMP_ACT_ERRNO","args":[
 {"index":1,"value":8589934592,"op":"SCMP_CMP_GE"},{"index":0,"value":3,"op":"SCMP_CMP_LT"},
 {"index":5,"value":18446744073709551615,"op":"SCMP_CMP_NE"}]},
{"names":["prctl"],"action":"SCMP_ACT_KILL_THREAD","args":[
 {"index":0,"value":4294967295,"valueTwo":22,"op":"SCMP_CMP_MASKED_EQ"}]},
{"names":["prctl"],"action":"SCMP_ACT_ERRNO","errnoRet":22}]}"#,
        ),
        s(
            "refused",
            r#"{"defaultAction":"SCMP_ACT_NOTIFY","architectures":["SCMP_ARCH_AARCH64"],
"syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO","errnoRet":70000},
{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        ),
    ]
}

#[cfg(test)]
mod corpus_tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/seccomp_compile")
    }

    #[test]
    fn corpus_seccomp_compile() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
            .expect("fuzz/corpus/seccomp_compile")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty());
        for f in files {
            eprintln!("seccomp_compile: {}", f.display());
            seccomp(&std::fs::read(&f).expect("corpus file"));
        }
    }

    /// `cargo test -p vessel-agent write_seed_corpus -- --ignored` rewrites the seeds.
    #[test]
    #[ignore = "writes fuzz/corpus/seccomp_compile/seed-*"]
    fn write_seed_corpus() {
        std::fs::create_dir_all(corpus_dir()).expect("corpus dir");
        for (name, data) in seeds() {
            std::fs::write(corpus_dir().join(format!("seed-{name}")), data).expect("seed");
        }
    }

    #[test]
    fn committed_seeds_match() {
        for (name, data) in seeds() {
            let path = corpus_dir().join(format!("seed-{name}"));
            assert!(
                std::fs::read(&path).unwrap_or_default() == data,
                "{} is stale: run `cargo test -p vessel-agent write_seed_corpus -- --ignored`",
                path.display()
            );
        }
    }

    #[test]
    fn seeds_compile_and_are_probed() {
        for (name, data) in seeds() {
            let s = seccomp(&data);
            assert!(s.parsed, "{name}");
            if name == "refused" {
                assert!(!s.compiled, "{name}");
            } else {
                assert!(s.compiled && s.probes >= 10, "{name}: {s:?}");
            }
        }
    }

    #[test]
    fn checker_rejects_broken_programs() {
        let ret = Insn {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        };
        let jeq = |jt, jf| Insn {
            code: JMP_JEQ_K,
            jt,
            jf,
            k: 0,
        };
        assert!(check_program(&[ret]).is_ok());
        assert!(check_program(&[]).is_err());
        assert!(
            check_program(&[jeq(0, 1), ret]).is_err(),
            "jump past the end"
        );
        assert!(check_program(&[jeq(0, 0)]).is_err(), "no return at the end");
        let load = Insn {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 62,
        };
        assert!(check_program(&[load, ret]).is_err(), "load outside");
        let bad_ret = Insn {
            k: 0x1234_0000,
            ..ret
        };
        assert!(check_program(&[bad_ret]).is_err(), "unknown action");
    }
}
