//! A tiny FUSE client for the tests: builds requests the way Linux's virtio-fs driver lays
//! them out (header + arguments readable, reply writable), sends them through the harness and
//! decodes the replies. Errors come back as positive errnos.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, AttrOut, CreateIn, Dirent, EntryOut, FallocateIn, FlushIn, ForgetIn, FsyncIn,
    GetattrIn, GetxattrIn, InHeader, InitIn, InitOut, LinkIn, LseekIn, LseekOut, MkdirIn, MknodIn,
    Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn,
    SetxattrIn, StatfsOut, WriteIn, WriteOut,
};
use vm_memory::ByteValued;

use super::{Harness, Part, HIPRIO};

/// FUSE protocol version the client speaks (Linux 6.1 sends 7.36).
const CLIENT_MINOR: u32 = 36;

pub(crate) struct Client<'a> {
    h: &'a mut Harness,
    unique: u64,
    pub uid: u32,
    pub gid: u32,
}

fn obj<T: ByteValued>(bytes: &[u8]) -> T {
    assert!(
        bytes.len() >= size_of::<T>(),
        "reply payload of {} bytes, expected {}",
        bytes.len(),
        size_of::<T>()
    );
    T::from_slice(&bytes[..size_of::<T>()]).copied().unwrap()
}

fn cstr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

impl<'a> Client<'a> {
    pub fn new(h: &'a mut Harness) -> Self {
        Self {
            h,
            unique: 100,
            uid: 0,
            gid: 0,
        }
    }

    fn header(&mut self, opcode: Opcode, nodeid: u64, len: usize) -> InHeader {
        self.unique += 1;
        InHeader {
            len: u32::try_from(len).unwrap(),
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: 42,
            padding: 0,
        }
    }

    /// Sends `opcode` with `args` (and `data` as extra readable descriptors, as Linux does
    /// for WRITE); room for `reply_len` bytes of reply payload.
    pub fn call_parts(
        &mut self,
        opcode: Opcode,
        nodeid: u64,
        args: &[u8],
        data: &[u8],
        reply_len: u32,
    ) -> Result<Vec<u8>, i32> {
        let len = size_of::<InHeader>() + args.len() + data.len();
        let header = self.header(opcode, nodeid, len);
        let mut first = header.as_slice().to_vec();
        first.extend_from_slice(args);
        let mut parts = vec![Part::In(first)];
        if !data.is_empty() {
            parts.push(Part::In(data.to_vec()));
        }
        parts.push(Part::Out(size_of::<OutHeader>() as u32 + reply_len));
        let used = self.h.send(&parts);
        let out: OutHeader = obj(&used.data);
        assert_eq!(out.unique, header.unique, "reply to another request");
        assert_eq!(out.len, used.len, "out header length vs used length");
        if out.error != 0 {
            assert_eq!(used.len as usize, size_of::<OutHeader>());
            return Err(-out.error);
        }
        Ok(used.data[size_of::<OutHeader>()..].to_vec())
    }

    pub fn call(
        &mut self,
        opcode: Opcode,
        nodeid: u64,
        args: &[u8],
        reply_len: u32,
    ) -> Result<Vec<u8>, i32> {
        self.call_parts(opcode, nodeid, args, &[], reply_len)
    }

    pub fn init(&mut self) -> InitOut {
        let args = InitIn {
            major: 7,
            minor: CLIENT_MINOR,
            max_readahead: 128 * 1024,
            // Everything Linux may offer, writeback caching included: the device decides.
            flags: 0x3fff_ffff,
        };
        let reply = self
            .call(
                Opcode::Init,
                0,
                args.as_slice(),
                size_of::<InitOut>() as u32,
            )
            .expect("FUSE_INIT");
        obj(&reply)
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        self.call(
            Opcode::Lookup,
            parent,
            &cstr(name),
            size_of::<EntryOut>() as u32,
        )
        .map(|r| obj(&r))
    }

    pub fn forget(&mut self, node: u64, nlookup: u64) -> u32 {
        let args = ForgetIn { nlookup };
        let len = size_of::<InHeader>() + size_of::<ForgetIn>();
        let header = self.header(Opcode::Forget, node, len);
        let mut req = header.as_slice().to_vec();
        req.extend_from_slice(args.as_slice());
        self.h.send_on(HIPRIO, &[Part::In(req)]).len
    }

    pub fn getattr(&mut self, node: u64) -> Result<AttrOut, i32> {
        let args = GetattrIn::default();
        self.call(
            Opcode::Getattr,
            node,
            args.as_slice(),
            size_of::<AttrOut>() as u32,
        )
        .map(|r| obj(&r))
    }

    pub fn setattr(&mut self, node: u64, args: SetattrIn) -> Result<AttrOut, i32> {
        self.call(
            Opcode::Setattr,
            node,
            args.as_slice(),
            size_of::<AttrOut>() as u32,
        )
        .map(|r| obj(&r))
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        self.open_out(node, flags).map(|o| o.fh)
    }

    /// OPEN's whole reply (handle and open flags).
    pub fn open_out(&mut self, node: u64, flags: i32) -> Result<OpenOut, i32> {
        let args = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(
            Opcode::Open,
            node,
            args.as_slice(),
            size_of::<OpenOut>() as u32,
        )
        .map(|r| obj::<OpenOut>(&r))
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let args = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(Opcode::Read, node, args.as_slice(), size)
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let args = WriteIn {
            fh,
            offset,
            size: u32::try_from(data.len()).unwrap(),
            ..Default::default()
        };
        self.call_parts(
            Opcode::Write,
            node,
            args.as_slice(),
            data,
            size_of::<WriteOut>() as u32,
        )
        .map(|r| obj::<WriteOut>(&r).size)
    }

    pub fn release(&mut self, node: u64, fh: u64, dir: bool) -> Result<(), i32> {
        let args = ReleaseIn {
            fh,
            ..Default::default()
        };
        let op = if dir {
            Opcode::Releasedir
        } else {
            Opcode::Release
        };
        self.call(op, node, args.as_slice(), 0).map(drop)
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
    ) -> Result<(EntryOut, OpenOut), i32> {
        let args = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            fuse_flags: 0,
        };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(name));
        let len = (size_of::<EntryOut>() + size_of::<OpenOut>()) as u32;
        self.call(Opcode::Create, parent, &a, len).map(|r| {
            (
                obj::<EntryOut>(&r),
                obj::<OpenOut>(&r[size_of::<EntryOut>()..]),
            )
        })
    }

    pub fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> Result<EntryOut, i32> {
        let args = MkdirIn { mode, umask: 0 };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(name));
        self.call(Opcode::Mkdir, parent, &a, size_of::<EntryOut>() as u32)
            .map(|r| obj(&r))
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
    ) -> Result<EntryOut, i32> {
        let args = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(name));
        self.call(Opcode::Mknod, parent, &a, size_of::<EntryOut>() as u32)
            .map(|r| obj(&r))
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        let mut a = cstr(name);
        a.extend_from_slice(&cstr(target));
        self.call(Opcode::Symlink, parent, &a, size_of::<EntryOut>() as u32)
            .map(|r| obj(&r))
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        self.call(Opcode::Readlink, node, &[], 4096)
    }

    pub fn link(&mut self, node: u64, newparent: u64, name: &str) -> Result<EntryOut, i32> {
        let args = LinkIn { oldnodeid: node };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(name));
        self.call(Opcode::Link, newparent, &a, size_of::<EntryOut>() as u32)
            .map(|r| obj(&r))
    }

    pub fn unlink(&mut self, parent: u64, name: &str, dir: bool) -> Result<(), i32> {
        let op = if dir { Opcode::Rmdir } else { Opcode::Unlink };
        self.call(op, parent, &cstr(name), 0).map(drop)
    }

    pub fn rename(&mut self, parent: u64, old: &str, newparent: u64, new: &str) -> Result<(), i32> {
        self.rename2(parent, old, newparent, new, 0)
    }

    /// RENAME2 with `flags` (`RENAME_NOREPLACE`, ...).
    pub fn rename2(
        &mut self,
        parent: u64,
        old: &str,
        newparent: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), i32> {
        let args = Rename2In {
            newdir: newparent,
            flags,
            padding: 0,
        };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(old));
        a.extend_from_slice(&cstr(new));
        self.call(Opcode::Rename2, parent, &a, 0).map(drop)
    }

    pub fn opendir(&mut self, node: u64) -> Result<u64, i32> {
        let args = OpenIn::default();
        self.call(
            Opcode::Opendir,
            node,
            args.as_slice(),
            size_of::<OpenOut>() as u32,
        )
        .map(|r| obj::<OpenOut>(&r).fh)
    }

    /// All names of one READDIR reply.
    pub fn readdir(&mut self, node: u64, fh: u64) -> Result<Vec<String>, i32> {
        let size = 4096;
        let args = ReadIn {
            fh,
            offset: 0,
            size,
            ..Default::default()
        };
        let reply = self.call(Opcode::Readdir, node, args.as_slice(), size)?;
        let mut names = Vec::new();
        let mut at = 0;
        while at + size_of::<Dirent>() <= reply.len() {
            let d: Dirent = obj(&reply[at..]);
            let start = at + size_of::<Dirent>();
            let name = &reply[start..start + d.namelen as usize];
            names.push(String::from_utf8_lossy(name).into_owned());
            at = (start + d.namelen as usize + 7) & !7;
        }
        Ok(names)
    }

    pub fn fsync(&mut self, node: u64, fh: u64) -> Result<(), i32> {
        self.fsync_with(Opcode::Fsync, node, fh, 0)
    }

    /// FSYNC or FSYNCDIR; `flags` 1 = fdatasync.
    pub fn fsync_with(&mut self, op: Opcode, node: u64, fh: u64, flags: u32) -> Result<(), i32> {
        let args = FsyncIn {
            fh,
            fsync_flags: flags,
            padding: 0,
        };
        self.call(op, node, args.as_slice(), 0).map(drop)
    }

    /// What close(2) sends before RELEASE.
    pub fn flush(&mut self, node: u64, fh: u64) -> Result<(), i32> {
        let args = FlushIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Flush, node, args.as_slice(), 0).map(drop)
    }

    pub fn access(&mut self, node: u64, mask: i32) -> Result<(), i32> {
        let args = AccessIn {
            mask: mask as u32,
            padding: 0,
        };
        self.call(Opcode::Access, node, args.as_slice(), 0)
            .map(drop)
    }

    pub fn lseek(&mut self, node: u64, fh: u64, offset: u64, whence: i32) -> Result<u64, i32> {
        let args = LseekIn {
            fh,
            offset,
            whence: whence as u32,
            padding: 0,
        };
        self.call(
            Opcode::Lseek,
            node,
            args.as_slice(),
            size_of::<LseekOut>() as u32,
        )
        .map(|r| obj::<LseekOut>(&r).offset)
    }

    /// RENAME (the pre-RENAME2 opcode).
    pub fn rename1(
        &mut self,
        parent: u64,
        old: &str,
        newparent: u64,
        new: &str,
    ) -> Result<(), i32> {
        let args = RenameIn { newdir: newparent };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(old));
        a.extend_from_slice(&cstr(new));
        self.call(Opcode::Rename, parent, &a, 0).map(drop)
    }

    /// READDIRPLUS, as Linux sends it with the backend's DO_READDIRPLUS: the reply's size.
    pub fn readdirplus(&mut self, node: u64, fh: u64) -> Result<usize, i32> {
        let args = ReadIn {
            fh,
            offset: 0,
            size: 4096,
            ..Default::default()
        };
        self.call(Opcode::Readdirplus, node, args.as_slice(), 4096)
            .map(|r| r.len())
    }

    pub fn fallocate(&mut self, node: u64, fh: u64, offset: u64, length: u64) -> Result<(), i32> {
        let args = FallocateIn {
            fh,
            offset,
            length,
            mode: 0,
            padding: 0,
        };
        self.call(Opcode::Fallocate, node, args.as_slice(), 0)
            .map(drop)
    }

    pub fn statfs(&mut self, node: u64) -> Result<StatfsOut, i32> {
        self.call(Opcode::Statfs, node, &[], size_of::<StatfsOut>() as u32)
            .map(|r| obj(&r))
    }

    pub fn getxattr(&mut self, node: u64, name: &str, size: u32) -> Result<Vec<u8>, i32> {
        let args = GetxattrIn { size, padding: 0 };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(name));
        self.call(Opcode::Getxattr, node, &a, 256)
    }

    pub fn setxattr(&mut self, node: u64, name: &str, value: &[u8]) -> Result<(), i32> {
        let args = SetxattrIn {
            size: u32::try_from(value.len()).unwrap(),
            flags: 0,
        };
        let mut a = args.as_slice().to_vec();
        a.extend_from_slice(&cstr(name));
        a.extend_from_slice(value);
        self.call(Opcode::Setxattr, node, &a, 0).map(drop)
    }

    pub fn listxattr(&mut self, node: u64, size: u32) -> Result<Vec<u8>, i32> {
        let args = GetxattrIn { size, padding: 0 };
        self.call(Opcode::Listxattr, node, args.as_slice(), 256)
    }

    pub fn removexattr(&mut self, node: u64, name: &str) -> Result<(), i32> {
        self.call(Opcode::Removexattr, node, &cstr(name), 0)
            .map(drop)
    }
}
