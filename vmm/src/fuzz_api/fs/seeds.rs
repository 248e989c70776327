//! Encoders of the virtio-fs harness's ops, and the committed seeds built with them.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi as abi;

use super::{op, LAYOUTS, NAMES};
use crate::fuzz_api::input::Enc;

/// Encoders of the ops, for seeds and tests.
pub mod enc {
    use super::*;

    /// Index of `opcode` in the layout table.
    pub fn layout(opcode: abi::Opcode) -> u8 {
        let i = LAYOUTS
            .iter()
            .position(|l| l.opcode == opcode as u32)
            .expect("opcode in the table");
        u8::try_from(i).expect("small table")
    }

    pub fn name(n: &str) -> u8 {
        let i = NAMES
            .iter()
            .position(|x| *x == n)
            .expect("name in the table");
        u8::try_from(i).expect("small table")
    }

    pub fn init(e: &mut Enc) {
        e.u8(op::INIT).u8(0).u8(0);
    }

    /// A request: node by index into the learnt ids (0 = root), root credentials, `fixed`
    /// as the struct bytes (zero-padded), `names` by index, handle (by index) patched in,
    /// a 4 KiB reply buffer.
    pub fn request(
        e: &mut Enc,
        opcode: abi::Opcode,
        node: u8,
        fixed: &[u8],
        fh_index: Option<u8>,
        names: &[&str],
    ) {
        let l = &LAYOUTS[usize::from(layout(opcode))];
        assert_eq!(l.names, names.len(), "{opcode:?}");
        assert!(fixed.len() <= l.fixed && !l.data);
        assert!(
            fh_index.is_none() || l.fh_at.is_some(),
            "{opcode:?} takes no handle"
        );
        let sel = if fh_index.is_some() { 1 } else { 0 };
        e.u8(op::REQUEST).u8(layout(opcode)).u8(sel).u8(node).u8(0);
        let mut f = fixed.to_vec();
        f.resize(l.fixed, 0);
        e.bytes(&f);
        if let Some(h) = fh_index {
            e.u8(h);
        }
        for n in names {
            e.u8(name(n));
        }
        e.u8(2); // reply: 4 KiB
    }

    /// A WRITE of `data` (at most 64 bytes) through handle `fh_index`.
    pub fn write(e: &mut Enc, node: u8, fh_index: u8, data: &[u8]) {
        assert!(data.len() <= 64);
        let mut fixed = vec![0u8; size_of::<abi::WriteIn>()];
        fixed[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        e.u8(op::REQUEST)
            .u8(layout(abi::Opcode::Write))
            .u8(1)
            .u8(node)
            .u8(0);
        e.bytes(&fixed).u8(fh_index);
        e.u16(data.len() as u16).u8(0).bytes(data);
        e.u8(2);
    }
}

/// The committed seeds: (file name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use abi::Opcode as Op;
    use enc::*;
    let mut out = Vec::new();
    let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();

    // Mount, look around, read a file, create and write one, list the root.
    let mut e = Enc::new();
    e.u8(0);
    init(&mut e);
    request(&mut e, Op::Lookup, 0, &[], None, &["file"]);
    request(&mut e, Op::Getattr, 1, &[], None, &[]);
    request(&mut e, Op::Open, 1, &u32s(&[2, 0]), None, &[]);
    let mut read = vec![0u8; 16];
    read.extend_from_slice(&4096u32.to_le_bytes());
    request(&mut e, Op::Read, 1, &read, Some(0), &[]);
    request(
        &mut e,
        Op::Create,
        0,
        &u32s(&[0o102, 0o100644, 0o022, 0]),
        None,
        &["new"],
    );
    write(&mut e, 2, 1, b"written by the guest");
    request(&mut e, Op::Release, 2, &[], Some(1), &[]);
    request(&mut e, Op::Opendir, 0, &[], None, &[]);
    let mut rd = vec![0u8; 16];
    rd.extend_from_slice(&4096u32.to_le_bytes());
    request(&mut e, Op::Readdirplus, 0, &rd, Some(2), &[]);
    request(&mut e, Op::Statfs, 0, &[], None, &[]);
    out.push(("session", e.finish()));

    // Escape attempts: `..` at the root, names with '/', symlinks out of the share
    // (open, readlink, rename onto the canary, link to it), a FIFO and a device node.
    let mut e = Enc::new();
    e.u8(0);
    init(&mut e);
    request(&mut e, Op::Lookup, 0, &[], None, &[".."]);
    request(&mut e, Op::Lookup, 0, &[], None, &["a/b"]);
    request(&mut e, Op::Lookup, 0, &[], None, &["link-out"]);
    request(&mut e, Op::Readlink, 1, &[], None, &[]);
    request(&mut e, Op::Open, 1, &u32s(&[2, 0]), None, &[]);
    request(&mut e, Op::Lookup, 0, &[], None, &["link-dir"]);
    request(&mut e, Op::Lookup, 2, &[], None, &["canary"]);
    request(&mut e, Op::Lookup, 0, &[], None, &["fifo"]);
    request(&mut e, Op::Open, 3, &u32s(&[0, 0]), None, &[]);
    request(
        &mut e,
        Op::Mknod,
        0,
        &u32s(&[0o20644, 0x0103, 0, 0]),
        None,
        &["new"],
    );
    request(&mut e, Op::Symlink, 0, &[], None, &["new2", "../outside"]);
    request(
        &mut e,
        Op::Rename,
        0,
        &1u64.to_le_bytes(),
        None,
        &["file", "../outside"],
    );
    out.push(("escapes", e.finish()));

    // Malformed: a header length that disagrees with the chain, a reply too small for a
    // header, a split header, a raw opcode, a request before INIT, a reset mid-session.
    let mut e = Enc::new();
    e.u8(1);
    e.u8(op::REQUEST)
        .u8(layout(Op::Lookup))
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(name("file"))
        .u8(2);
    init(&mut e);
    e.u8(op::REQUEST)
        .u8(layout(Op::Lookup))
        .u8(8)
        .u8(0)
        .u8(0)
        .u8(name("file"));
    e.u32(1000).u8(2);
    e.u8(op::REQUEST)
        .u8(layout(Op::Getattr))
        .u8(0)
        .u8(0)
        .u8(0)
        .bytes(&[0; 16])
        .u8(0);
    e.u8(op::REQUEST).u8(layout(Op::Mkdir)).u8(16).u8(0).u8(1);
    e.bytes(&u32s(&[0o755, 0]))
        .u8(name("new"))
        .u8(2)
        .u16(3)
        .u16(50);
    e.u8(op::REQUEST)
        .u8(0)
        .u8(4)
        .u8(0)
        .u8(0)
        .u8(name("dir"))
        .u32(9999)
        .u8(2);
    e.u8(op::RESET);
    init(&mut e);
    e.u8(op::HIPRIO)
        .u8(layout(Op::Forget))
        .u8(0)
        .u8(0)
        .u8(0)
        .u64(1)
        .u8(3);
    out.push(("malformed", e.finish()));
    out
}
