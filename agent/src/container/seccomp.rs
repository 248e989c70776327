//! OCI seccomp profile → classic BPF program for `seccomp(SECCOMP_SET_MODE_FILTER)`.
//!
//! Written here rather than with `seccompiler`, whose filters carry one match action for all
//! rules, while OCI profiles mix actions (ALLOW, ERRNO(n), KILL, …) per syscall; and without
//! libseccomp, to keep the agent a static binary with no C dependency.
//!
//! Semantics follow runc + libseccomp:
//! * syscall names are translated for x86_64; an unknown name is skipped with one warning;
//! * rules for one syscall are tried in profile order, conditional ones first; a rule's
//!   conditions are ANDed, except when two conditions test the same argument, where runc
//!   adds one rule per condition (ORed);
//! * ERRNO / TRACE without `errnoRet` return EPERM;
//! * comparisons are on the full 64-bit argument; MASKED_EQ is `(arg & value) == valueTwo`;
//! * the i386 and x32 ABIs are not translated: their syscalls kill the thread, as libseccomp
//!   does for an architecture outside the filter.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use serde::{Deserialize, Serialize};

use super::syscall_table::SYSCALLS_X86_64;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const MAX_INSNS: usize = 4096;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes (class | op | source).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// One BPF instruction, in a form that crosses the agent → child pipe as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A translated profile, ready to load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompiledSeccomp {
    pub program: Vec<Insn>,
    /// SECCOMP_FILTER_FLAG_* bits.
    pub flags: u32,
}

impl CompiledSeccomp {
    pub fn to_sock_filters(&self) -> Vec<libc::sock_filter> {
        self.program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect()
    }
}

/// A profile that cannot be translated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccomp action {0:?} is not supported")]
    UnsupportedAction(LinuxSeccompAction),
    #[error("seccomp errnoRet {0} is out of range (0..=65535)")]
    ErrnoOutOfRange(u32),
    #[error("seccomp rule #{0} names no syscall")]
    EmptyRule(usize),
    #[error("seccomp rule for {name:?}: argument index {index} is out of range (0..=5)")]
    ArgIndex { name: String, index: usize },
    #[error("seccomp profile lists architectures but not x86_64")]
    NoNativeArch,
    #[error("seccomp program has {0} instructions, over the kernel's limit of 4096")]
    TooLarge(usize),
    #[error("seccomp program: a jump spans more than 255 instructions")]
    JumpTooFar,
}

/// Translates `profile`. Returns the program and the syscall names that were skipped
/// because x86_64 does not have them.
pub fn compile(profile: &LinuxSeccomp) -> Result<(CompiledSeccomp, Vec<String>), SeccompError> {
    if let Some(arches) = profile.architectures() {
        use oci_spec::runtime::Arch;
        if !arches.is_empty()
            && !arches
                .iter()
                .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative))
        {
            return Err(SeccompError::NoNativeArch);
        }
    }
    let default = action_code(profile.default_action(), profile.default_errno_ret())?;
    let mut flags = 0u32;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            // Only meaningful with a user-notification listener, which is not supported.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }

    // Per syscall number: rules in profile order; (conditions, action).
    let mut per_syscall: Vec<(u32, Vec<Rule>)> = Vec::new();
    let mut unknown = Vec::new();
    for (i, rule) in profile.syscalls().iter().flatten().enumerate() {
        if rule.names().is_empty() {
            return Err(SeccompError::EmptyRule(i));
        }
        let action = action_code(rule.action(), rule.errno_ret())?;
        let mut conds = Vec::new();
        for arg in rule.args().iter().flatten() {
            if arg.index() > 5 {
                return Err(SeccompError::ArgIndex {
                    name: rule.names()[0].clone(),
                    index: arg.index(),
                });
            }
            conds.push(Cond {
                index: arg.index() as u32,
                op: arg.op(),
                value: arg.value(),
                value_two: arg.value_two().unwrap_or(0),
            });
        }
        // runc: conditions on the same argument become separate (ORed) rules.
        // Counted in usize: a u8 wrapped at 256 conditions on one argument (and ANDed them).
        let mut seen = [0usize; 6];
        conds.iter().for_each(|c| seen[c.index as usize] += 1);
        let rule_sets: Vec<Vec<Cond>> = if seen.iter().any(|&n| n > 1) {
            conds.iter().map(|c| vec![*c]).collect()
        } else {
            vec![conds]
        };
        for name in rule.names() {
            let Some(nr) = syscall_number(name) else {
                if !unknown.contains(name) {
                    unknown.push(name.clone());
                }
                continue;
            };
            let idx = match per_syscall.iter().position(|(n, _)| *n == nr) {
                Some(idx) => idx,
                None => {
                    per_syscall.push((nr, Vec::new()));
                    per_syscall.len() - 1
                }
            };
            for set in &rule_sets {
                per_syscall[idx].1.push((set.clone(), action));
            }
        }
    }

    let mut asm = Asm::default();
    asm.stmt(LD_W_ABS, 4);
    asm.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, Target::Skip(1), Target::Next);
    asm.stmt(RET_K, RET_KILL_THREAD);
    asm.stmt(LD_W_ABS, 0);
    asm.jump(JMP_JGE_K, X32_SYSCALL_BIT, Target::Skip(0), Target::Skip(1));
    asm.stmt(RET_K, RET_KILL_THREAD);
    let mut blocks = Vec::new();
    for (nr, rules) in &per_syscall {
        let unconditional = rules.iter().find(|(c, _)| c.is_empty()).map(|(_, a)| *a);
        let conditional: Vec<_> = rules.iter().filter(|(c, _)| !c.is_empty()).collect();
        if conditional.is_empty() {
            let action = unconditional.unwrap_or(default);
            if action != default {
                asm.jump(JMP_JEQ_K, *nr, Target::Next, Target::Skip(1));
                asm.stmt(RET_K, action);
            }
            continue;
        }
        let label = asm.new_label();
        asm.jump(JMP_JEQ_K, *nr, Target::Next, Target::Skip(1));
        asm.ja(label);
        blocks.push((label, conditional, unconditional.unwrap_or(default)));
    }
    asm.stmt(RET_K, default);
    for (label, rules, fallback) in blocks {
        asm.place(label);
        for (conds, action) in rules {
            let next_rule = asm.new_label();
            for c in conds {
                emit_cond(&mut asm, c, next_rule);
            }
            asm.stmt(RET_K, *action);
            asm.place(next_rule);
        }
        asm.stmt(RET_K, fallback);
    }
    let program = asm.resolve()?;
    if program.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok((CompiledSeccomp { program, flags }, unknown))
}

/// The x86_64 number of a syscall name.
pub fn syscall_number(name: &str) -> Option<u32> {
    SYSCALLS_X86_64
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| SYSCALLS_X86_64[i].1)
}

fn action_code(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = |e: Option<u32>| match e {
        None => Ok(libc::EPERM as u32),
        Some(v) if v <= 0xffff => Ok(v),
        Some(v) => Err(SeccompError::ErrnoOutOfRange(v)),
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data(errno)?,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data(errno)?,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        a @ LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::UnsupportedAction(a)),
    })
}

/// One rule of a syscall: conditions (ANDed) and the action when they hold.
type Rule = (Vec<Cond>, u32);

#[derive(Clone, Copy, Debug)]
struct Cond {
    index: u32,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// Emits a 64-bit argument test: falls through when it holds, jumps to `fail` otherwise.
fn emit_cond(asm: &mut Asm, c: &Cond, fail: Label) {
    let lo_off = 16 + 8 * c.index;
    let hi_off = lo_off + 4;
    let (vhi, vlo) = ((c.value >> 32) as u32, c.value as u32);
    let ok = asm.new_label();
    let (f, o, n) = (Target::Label(fail), Target::Label(ok), Target::Next);
    use LinuxSeccompOperator as Op;
    match c.op {
        Op::ScmpCmpEq => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JEQ_K, vhi, n, f);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JMP_JEQ_K, vlo, n, f);
        }
        Op::ScmpCmpNe => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JEQ_K, vhi, n, o);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JMP_JEQ_K, vlo, f, o);
        }
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            let low_op = if c.op == Op::ScmpCmpGt {
                JMP_JGT_K
            } else {
                JMP_JGE_K
            };
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JGT_K, vhi, o, n);
            asm.jump(JMP_JEQ_K, vhi, n, f);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(low_op, vlo, o, f);
        }
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            // a < v  ⇔ !(a >= v);  a <= v ⇔ !(a > v)
            let low_op = if c.op == Op::ScmpCmpLt {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JMP_JGT_K, vhi, f, n);
            asm.jump(JMP_JEQ_K, vhi, n, o);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(low_op, vlo, f, o);
        }
        Op::ScmpCmpMaskedEq => {
            let (mhi, mlo) = ((c.value >> 32) as u32, c.value as u32);
            let (whi, wlo) = ((c.value_two >> 32) as u32, c.value_two as u32);
            asm.stmt(LD_W_ABS, hi_off);
            asm.stmt(ALU_AND_K, mhi);
            asm.jump(JMP_JEQ_K, whi, n, f);
            asm.stmt(LD_W_ABS, lo_off);
            asm.stmt(ALU_AND_K, mlo);
            asm.jump(JMP_JEQ_K, wlo, n, f);
        }
    }
    asm.place(ok);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

#[derive(Clone, Copy, Debug)]
enum Target {
    Next,
    /// Skip this many instructions after the jump.
    Skip(u8),
    Label(Label),
}

enum Item {
    Stmt(u16, u32),
    Jump(u16, u32, Target, Target),
    Ja(Label),
    Place(Label),
}

/// A tiny assembler with forward labels.
#[derive(Default)]
struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    fn stmt(&mut self, code: u16, k: u32) {
        self.items.push(Item::Stmt(code, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.items.push(Item::Jump(code, k, jt, jf));
    }
    fn ja(&mut self, l: Label) {
        self.items.push(Item::Ja(l));
    }
    fn new_label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }
    fn place(&mut self, l: Label) {
        self.items.push(Item::Place(l));
    }

    fn resolve(self) -> Result<Vec<Insn>, SeccompError> {
        let mut pos = vec![usize::MAX; self.labels];
        let mut n = 0;
        for item in &self.items {
            match item {
                Item::Place(l) => pos[l.0] = n,
                _ => n += 1,
            }
        }
        if n > MAX_INSNS {
            return Err(SeccompError::TooLarge(n));
        }
        let mut out = Vec::with_capacity(n);
        for item in &self.items {
            let here = out.len();
            let off = |t: Target| -> Result<u8, SeccompError> {
                let d = match t {
                    Target::Next => 0,
                    Target::Skip(s) => s as usize,
                    Target::Label(l) => pos[l.0]
                        .checked_sub(here + 1)
                        .ok_or(SeccompError::JumpTooFar)?,
                };
                u8::try_from(d).map_err(|_| SeccompError::JumpTooFar)
            };
            match item {
                Item::Place(_) => continue,
                Item::Stmt(code, k) => out.push(Insn {
                    code: *code,
                    jt: 0,
                    jf: 0,
                    k: *k,
                }),
                Item::Jump(code, k, jt, jf) => out.push(Insn {
                    code: *code,
                    jt: off(*jt)?,
                    jf: off(*jf)?,
                    k: *k,
                }),
                Item::Ja(l) => {
                    let d = pos[l.0]
                        .checked_sub(here + 1)
                        .ok_or(SeccompError::JumpTooFar)?;
                    out.push(Insn {
                        code: JMP_JA,
                        jt: 0,
                        jf: 0,
                        k: d as u32,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
