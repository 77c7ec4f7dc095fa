//! A filesystem that loses what was not fsync'd when the power is cut: the test's stand-in
//! for an eMMC or SD card, since kill -9 keeps the page cache and so cannot prove fsync
//! discipline (and device-mapper's dm-flakey is not available here).
//!
//! One flat directory held in memory. Each file keeps two copies: what was last made
//! durable by `fsync`, and what writes made of it since, with the list of those unsynced
//! writes and truncations. Names are durable at once (as on a journalling filesystem).
//! [`LossyFs::cut`] is the power cut: each file falls back to its durable copy plus, in
//! [`Cut::Torn`], a random subset of its unsynced 4 KiB pieces in the order they were
//! written. The test unmounts first, so the kernel's page cache goes too.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// What survives a cut of what was not fsync'd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing.
    All,
    /// A random subset of 4 KiB pieces (torn writes).
    Torn,
}

const PIECE: usize = 4096;
const TTL: Duration = Duration::ZERO;

#[derive(Clone, Debug)]
enum Unsynced {
    Write { offset: usize, data: Vec<u8> },
    Truncate(usize),
}

#[derive(Default)]
struct File {
    name: String,
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

fn apply(data: &mut Vec<u8>, change: &Unsynced) {
    match change {
        Unsynced::Write { offset, data: bytes } => {
            let end = offset + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*offset..end].copy_from_slice(bytes);
        }
        Unsynced::Truncate(len) => data.resize(*len, 0),
    }
}

#[derive(Default)]
struct State {
    files: BTreeMap<u64, File>,
    next_ino: u64,
}

impl State {
    fn by_name(&self, name: &OsStr) -> Option<u64> {
        let name = name.to_str()?;
        self.files.iter().find(|(_, f)| f.name == name).map(|(ino, _)| *ino)
    }
}

/// The filesystem's state, shared by the mounts it outlives.
#[derive(Clone, Default)]
pub struct LossyFs(Arc<Mutex<State>>);

impl LossyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Mounts it at `dir` until the session is dropped or unmounted.
    pub fn mount(&self, dir: &Path) -> fuser::BackgroundSession {
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("lossyfs".into())];
        config.acl = fuser::SessionACL::All;
        fuser::spawn_mount(self.clone(), dir, &config).expect("mount the lossy filesystem (root and /dev/fuse)")
    }

    /// The power cut; unmount first. Returns how many unsynced bytes were dropped.
    pub fn cut(&self, cut: Cut, rng: &mut fastrand::Rng) -> usize {
        let mut dropped = 0;
        for file in self.state().files.values_mut() {
            let mut kept = file.durable.clone();
            for change in std::mem::take(&mut file.unsynced) {
                match (&change, cut) {
                    (Unsynced::Write { offset, data }, Cut::Torn) => {
                        for (i, piece) in data.chunks(PIECE).enumerate() {
                            if rng.bool() {
                                apply(&mut kept, &Unsynced::Write { offset: offset + i * PIECE, data: piece.to_vec() });
                            } else {
                                dropped += piece.len();
                            }
                        }
                    }
                    (Unsynced::Truncate(_), Cut::Torn) if rng.bool() => apply(&mut kept, &change),
                    (Unsynced::Write { data, .. }, _) => dropped += data.len(),
                    _ => {}
                }
            }
            file.durable = kept.clone();
            file.current = kept;
        }
        dropped
    }

    fn attr(&self, ino: u64, state: &State) -> Option<FileAttr> {
        let (kind, size, perm) = if ino == 1 {
            (FileType::Directory, 0, 0o777)
        } else {
            (FileType::RegularFile, state.files.get(&ino)?.current.len() as u64, 0o666)
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PIECE as u32,
            flags: 0,
        })
    }

    fn change(&self, ino: INodeNo, change: Unsynced) -> Result<(), Errno> {
        let mut state = self.state();
        let file = state.files.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
        apply(&mut file.current, &change);
        file.unsynced.push(change);
        Ok(())
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        match state.by_name(name).filter(|_| parent.0 == 1).and_then(|ino| self.attr(ino, &state)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0, &self.state()) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(size) = size
            && let Err(e) = self.change(ino, Unsynced::Truncate(size as usize))
        {
            return reply.error(e);
        }
        match self.attr(ino.0, &self.state()) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.by_name(name) {
            Some(ino) => {
                state.files.remove(&ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let (Some(ino), Some(new)) = (state.by_name(name), newname.to_str()) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(old) = state.by_name(newname) {
            state.files.remove(&old);
        }
        state.files.get_mut(&ino).expect("found above").name = new.to_string();
        reply.ok();
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let ino = match state.by_name(name) {
            Some(ino) => ino,
            None => {
                state.next_ino = state.next_ino.max(1) + 1;
                let ino = state.next_ino;
                let name = name.to_string_lossy().into_owned();
                state.files.insert(ino, File { name, ..File::default() });
                ino
            }
        };
        let attr = self.attr(ino, &state).expect("just made");
        reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        let Some(file) = state.files.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let start = (offset as usize).min(file.current.len());
        let end = (start + size as usize).min(file.current.len());
        reply.data(&file.current[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.change(ino, Unsynced::Write { offset: offset as usize, data: data.to_vec() }) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.files.get_mut(&ino.0) {
            Some(file) => {
                file.durable = file.current.clone();
                file.unsynced.clear();
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.state();
        let mut entries: Vec<(u64, FileType, String)> =
            vec![(1, FileType::Directory, ".".into()), (1, FileType::Directory, "..".into())];
        entries.extend(state.files.iter().map(|(ino, f)| (*ino, FileType::RegularFile, f.name.clone())));
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A roomy card: the agent's filesystem reserve never comes into play.
        let blocks = 1 << 20;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, PIECE as u32, 255, PIECE as u32);
    }
}
