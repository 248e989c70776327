//! Unit tests of the profile translation, run through a small BPF interpreter.
use super::*;
use oci_spec::runtime::LinuxSeccomp;

/// Evaluates `prog` on (arch, nr, args) the way the kernel does for classic BPF.
fn run(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                a = u32::from_le_bytes(data[i.k as usize..i.k as usize + 4].try_into().unwrap())
            }
            ALU_AND_K => a &= i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let t = match i.code {
                    JMP_JEQ_K => a == i.k,
                    JMP_JGT_K => a > i.k,
                    _ => a >= i.k,
                };
                pc += if t { i.jt } else { i.jf } as usize;
            }
            RET_K => return i.k,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

fn nr(name: &str) -> u32 {
    syscall_number(name).unwrap()
}

#[test]
fn table_is_sorted_and_known_numbers_match() {
    assert!(SYSCALLS_X86_64.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("mkdir"), Some(libc::SYS_mkdir as u32));
    assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3 as u32));
    assert_eq!(syscall_number("arm_fadvise64_64"), None);
}

#[test]
fn errno_and_kill_actions_with_default_allow() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"},
            {"names":["uname"],"action":"SCMP_ACT_KILL_PROCESS"},
            {"names":["getpid"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
            {"names":["no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    let (c, unknown) = compile(&p).unwrap();
    assert_eq!(unknown, vec!["no_such_call".to_string()]);
    let r = |n: &str| run(&c.program, AUDIT_ARCH_X86_64, nr(n), [0; 6]);
    assert_eq!(r("mkdir"), RET_ERRNO | 1);
    assert_eq!(r("mkdirat"), RET_ERRNO | 1);
    assert_eq!(r("uname"), RET_KILL_PROCESS);
    assert_eq!(r("getpid"), RET_ERRNO | 38);
    assert_eq!(r("read"), RET_ALLOW);
    // Other ABIs are killed.
    assert_eq!(run(&c.program, 0x4000_0003, 0, [0; 6]), RET_KILL_THREAD);
    assert_eq!(
        run(&c.program, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1, [0; 6]),
        RET_KILL_THREAD
    );
}

#[test]
fn allowlist_with_default_errno_ret() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    let (c, _) = compile(&p).unwrap();
    assert_eq!(
        run(&c.program, AUDIT_ARCH_X86_64, nr("read"), [0; 6]),
        RET_ALLOW
    );
    assert_eq!(
        run(&c.program, AUDIT_ARCH_X86_64, nr("open"), [0; 6]),
        RET_ERRNO | 38
    );
}

#[test]
fn sixty_four_bit_comparisons() {
    let big: u64 = 0x1_0000_0005;
    for (op, cases) in [
        ("SCMP_CMP_EQ", [(big, true), (5, false), (big + 1, false)]),
        (
            "SCMP_CMP_NE",
            [(big, false), (5, true), (big + (1 << 32), true)],
        ),
        (
            "SCMP_CMP_GT",
            [(big, false), (big + 1, true), (0xffff_ffff, false)],
        ),
        (
            "SCMP_CMP_GE",
            [(big, true), (big - 1, false), (2 << 32, true)],
        ),
        (
            "SCMP_CMP_LT",
            [(big, false), (big - 1, true), (0xffff_ffff_ffff, false)],
        ),
        ("SCMP_CMP_LE", [(big, true), (big + 1, false), (3, true)]),
    ] {
        let p = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["personality"],
                "action":"SCMP_ACT_ERRNO","args":[{{"index":2,"value":{big},"op":"{op}"}}]}}]}}"#
        ));
        let (c, _) = compile(&p).unwrap();
        for (arg, denied) in cases {
            let got = run(
                &c.program,
                AUDIT_ARCH_X86_64,
                nr("personality"),
                [0, 0, arg, 0, 0, 0],
            );
            assert_eq!(got == (RET_ERRNO | 1), denied, "{op} arg={arg:#x}");
        }
        // Other syscalls are untouched.
        assert_eq!(
            run(
                &c.program,
                AUDIT_ARCH_X86_64,
                nr("read"),
                [0, 0, big, 0, 0, 0]
            ),
            RET_ALLOW
        );
    }
}

#[test]
fn masked_eq_and_rule_order_with_unconditional_fallback() {
    // Docker's clone rule: allow clone unless namespace flags are set.
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["clone"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
            {"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
            {"names":["getpid"],"action":"SCMP_ACT_LOG","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    let (c, _) = compile(&p).unwrap();
    let clone = |flags: u64| {
        run(
            &c.program,
            AUDIT_ARCH_X86_64,
            nr("clone"),
            [flags, 0, 0, 0, 0, 0],
        )
    };
    assert_eq!(clone(libc::SIGCHLD as u64), RET_ALLOW);
    assert_eq!(
        clone(libc::CLONE_NEWNS as u64 | libc::SIGCHLD as u64),
        RET_ERRNO | 1
    );
    let pers = |v: u64| {
        run(
            &c.program,
            AUDIT_ARCH_X86_64,
            nr("personality"),
            [v, 0, 0, 0, 0, 0],
        )
    };
    assert_eq!(pers(0), RET_ALLOW);
    assert_eq!(pers(8), RET_ALLOW);
    assert_eq!(pers(9), RET_ERRNO | 1);
    let gp = |v: u64| {
        run(
            &c.program,
            AUDIT_ARCH_X86_64,
            nr("getpid"),
            [v, 0, 0, 0, 0, 0],
        )
    };
    assert_eq!(
        gp(1),
        RET_LOG,
        "conditional rules are tried before the unconditional one"
    );
    assert_eq!(gp(2), RET_ALLOW);
}

#[test]
fn same_argument_twice_means_or() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"},{"index":1,"value":15,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    let (c, _) = compile(&p).unwrap();
    let k = |s: u64| {
        run(
            &c.program,
            AUDIT_ARCH_X86_64,
            nr("kill"),
            [1, s, 0, 0, 0, 0],
        )
    };
    assert_eq!(k(9), RET_ERRNO | 1);
    assert_eq!(k(15), RET_ERRNO | 1);
    assert_eq!(k(2), RET_ALLOW);
}

#[test]
fn malformed_profiles_are_errors() {
    let bad = |json: &str| compile(&profile(json)).unwrap_err();
    assert_eq!(
        bad(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#
        ),
        SeccompError::ArgIndex {
            name: "read".into(),
            index: 6
        }
    );
    assert_eq!(
        bad(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO"}]}"#
        ),
        SeccompError::EmptyRule(0)
    );
    assert_eq!(
        bad(r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}"#),
        SeccompError::ErrnoOutOfRange(70000)
    );
    assert_eq!(
        bad(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#),
        SeccompError::UnsupportedAction(LinuxSeccompAction::ScmpActNotify)
    );
    assert_eq!(
        bad(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64"]}"#),
        SeccompError::NoNativeArch
    );
    // An unknown action name does not even parse.
    assert!(serde_json::from_str::<LinuxSeccomp>(r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).is_err());
}

#[test]
fn large_allowlist_fits() {
    let names: Vec<String> = SYSCALLS_X86_64
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let p = profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":[{}],"action":"SCMP_ACT_ALLOW"}}]}}"#,
        names.join(",")
    ));
    let (c, _) = compile(&p).unwrap();
    assert!(c.program.len() < MAX_INSNS);
    assert_eq!(
        run(&c.program, AUDIT_ARCH_X86_64, nr("exit_group"), [0; 6]),
        RET_ALLOW
    );
}

/// Found by reading the compiler for the `seccomp_compile` fuzz target: conditions were
/// counted per argument in a `u8`, so 256 conditions on one argument overflowed (a panic
/// with overflow checks; in release builds the count wrapped to 0 and the rule's conditions
/// were ANDed instead of ORed: the syscall was allowed for none of the listed values).
#[test]
fn many_conditions_on_one_argument_stay_ored() {
    let args: Vec<String> = (0..256)
        .map(|v| format!(r#"{{"index":0,"value":{v},"op":"SCMP_CMP_EQ"}}"#))
        .collect();
    let p = profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":["personality"],
            "action":"SCMP_ACT_ALLOW","args":[{}]}}]}}"#,
        args.join(",")
    ));
    let (c, _) = compile(&p).unwrap();
    let r = |a: u64| {
        run(
            &c.program,
            AUDIT_ARCH_X86_64,
            nr("personality"),
            [a, 0, 0, 0, 0, 0],
        )
    };
    for v in [0, 1, 8, 255] {
        assert_eq!(r(v), RET_ALLOW, "personality({v})");
    }
    assert_eq!(r(256), RET_ERRNO | 1);
}
