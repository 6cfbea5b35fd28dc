//! An in-memory tree whose file contents become available later.
//!
//! The tree (directories, symlinks, file sizes) is known up front, so
//! lookup, getattr, readdir and readlink answer at once. Each file starts
//! pending: an open of it waits (a parked future on a per-inode
//! `tokio::sync::watch`) until [`MemFs::fulfil`] gives its content or
//! [`MemFs::fail`] makes it fail with `EIO`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::errno::{Errno, Result};
use crate::fs::{Filesystem, RequestContext, XattrValue};
use crate::reply::{
    Attr, DirEntry, Entry, FileAttr, FileKind, Opened, OpenedFile, ReadData, StatFs,
};

/// The inode number of the root directory.
pub const ROOT: u64 = 1;

/// The content of a file, once available.
#[derive(Clone, Debug)]
pub enum Content {
    /// Bytes held in memory.
    Bytes(Arc<[u8]>),
    /// A local backing file: spliced into read replies, or handed to the
    /// kernel for passthrough ([`MemFs::set_passthrough`]).
    File(Arc<File>),
}

/// Where a file's content stands.
#[derive(Clone, Debug)]
pub enum ContentState {
    /// Not there yet: opens wait.
    Pending,
    /// There: opens succeed and reads return it.
    Ready(Content),
    /// It will never come: opens fail with `EIO`.
    Failed,
}

enum NodeKind {
    Directory {
        parent: u64,
        children: BTreeMap<OsString, u64>,
    },
    Symlink(Vec<u8>),
    File(watch::Sender<ContentState>),
}

struct Node {
    attr: FileAttr,
    kind: NodeKind,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

/// An in-memory filesystem with deferred file contents. Cloning gives
/// another handle to the same tree: keep one to fulfil or fail files while
/// the other is mounted.
#[derive(Clone)]
pub struct MemFs {
    tree: Arc<RwLock<Tree>>,
    ttl: Duration,
    passthrough: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
}

impl MemFs {
    /// An empty tree (just the root directory); `ttl` is the attribute and
    /// entry timeout given to the kernel.
    pub fn new(ttl: Duration) -> Self {
        let root = Node {
            attr: FileAttr::new(ROOT, FileKind::Directory, 0o755, 0),
            kind: NodeKind::Directory {
                parent: ROOT,
                children: BTreeMap::new(),
            },
            xattrs: BTreeMap::new(),
        };
        let tree = Tree {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
        };
        MemFs {
            tree: Arc::new(RwLock::new(tree)),
            ttl,
            passthrough: Arc::new(AtomicBool::new(false)),
            reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Name file-backed contents as backing files at open, so that a
    /// session with passthrough lets the kernel read them directly
    /// (default off: reads reach [`Filesystem::read`]).
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// How many read requests reached this filesystem.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Adds directory `name` in `parent`; returns its inode.
    pub fn mkdir(&self, parent: u64, name: &str) -> Result<u64> {
        let kind = NodeKind::Directory {
            parent,
            children: BTreeMap::new(),
        };
        self.insert(parent, name, FileKind::Directory, 0o755, 0, kind)
    }

    /// Adds a pending file `name` of `size` bytes in `parent`.
    pub fn add_file(&self, parent: u64, name: &str, size: u64) -> Result<u64> {
        let kind = NodeKind::File(watch::Sender::new(ContentState::Pending));
        self.insert(parent, name, FileKind::File, 0o444, size, kind)
    }

    /// Adds symbolic link `name` to `target` in `parent`.
    pub fn add_symlink(&self, parent: u64, name: &str, target: &str) -> Result<u64> {
        let len = target.len() as u64;
        let target = target.as_bytes().to_vec();
        self.insert(
            parent,
            name,
            FileKind::Symlink,
            0o777,
            len,
            NodeKind::Symlink(target),
        )
    }

    /// Sets extended attribute `name` of `ino`.
    pub fn set_xattr(&self, ino: u64, name: &str, value: &[u8]) -> Result<()> {
        let mut tree = self.tree_write();
        let node = tree.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.xattrs.insert(name.into(), value.to_vec());
        Ok(())
    }

    /// Makes the content of file `ino` available: waiting opens proceed.
    /// The file's size becomes the content's.
    pub fn fulfil(&self, ino: u64, content: Content) -> Result<()> {
        let size = match &content {
            Content::Bytes(bytes) => bytes.len() as u64,
            Content::File(file) => file.metadata().map_err(Errno::from)?.len(),
        };
        self.settle(ino, ContentState::Ready(content), Some(size))
    }

    /// Gives up on the content of file `ino`: waiting and later opens fail
    /// with `EIO`.
    pub fn fail(&self, ino: u64) -> Result<()> {
        self.settle(ino, ContentState::Failed, None)
    }

    /// How many opens are waiting for content right now (over all files).
    pub fn waiting_opens(&self) -> usize {
        self.tree_read()
            .nodes
            .values()
            .map(|node| match &node.kind {
                NodeKind::File(content) if matches!(*content.borrow(), ContentState::Pending) => {
                    content.receiver_count()
                }
                _ => 0,
            })
            .sum()
    }

    fn settle(&self, ino: u64, state: ContentState, size: Option<u64>) -> Result<()> {
        let mut tree = self.tree_write();
        let node = tree.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let NodeKind::File(content) = &node.kind else {
            return Err(Errno::EISDIR);
        };
        content.send_replace(state);
        if let Some(size) = size {
            node.attr.size = size;
            node.attr.blocks = size.div_ceil(512);
        }
        Ok(())
    }

    fn insert(
        &self,
        parent: u64,
        name: &str,
        kind: FileKind,
        perm: u16,
        size: u64,
        node_kind: NodeKind,
    ) -> Result<u64> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(Errno::EINVAL);
        }
        let mut tree = self.tree_write();
        let ino = tree.next_ino;
        let Some(Node {
            kind: NodeKind::Directory { children, .. },
            attr: parent_attr,
            ..
        }) = tree.nodes.get_mut(&parent)
        else {
            return Err(Errno::ENOTDIR);
        };
        if children.contains_key(OsStr::new(name)) {
            return Err(Errno::new(libc::EEXIST));
        }
        children.insert(name.into(), ino);
        if kind == FileKind::Directory {
            parent_attr.nlink += 1;
        }
        tree.next_ino += 1;
        tree.nodes.insert(
            ino,
            Node {
                attr: FileAttr::new(ino, kind, perm, size),
                kind: node_kind,
                xattrs: BTreeMap::new(),
            },
        );
        Ok(ino)
    }

    fn tree_read(&self) -> RwLockReadGuard<'_, Tree> {
        self.tree
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tree_write(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr> {
        self.tree_read()
            .nodes
            .get(&ino)
            .map(|node| node.attr.clone())
            .ok_or(Errno::ENOENT)
    }

    fn content_of(&self, ino: u64) -> Result<watch::Receiver<ContentState>> {
        match self.tree_read().nodes.get(&ino).map(|node| &node.kind) {
            Some(NodeKind::File(content)) => Ok(content.subscribe()),
            Some(NodeKind::Directory { .. }) => Err(Errno::EISDIR),
            Some(NodeKind::Symlink(_)) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }
}

impl Filesystem for MemFs {
    async fn lookup(&self, _ctx: &RequestContext, parent: u64, name: &OsStr) -> Result<Entry> {
        let tree = self.tree_read();
        let Some(NodeKind::Directory { children, .. }) = tree.nodes.get(&parent).map(|n| &n.kind)
        else {
            return Err(Errno::ENOTDIR);
        };
        let ino = *children.get(name).ok_or(Errno::ENOENT)?;
        let attr = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?.attr.clone();
        Ok(Entry {
            attr,
            generation: 0,
            attr_ttl: self.ttl,
            entry_ttl: self.ttl,
        })
    }

    async fn getattr(&self, _ctx: &RequestContext, ino: u64, _fh: Option<u64>) -> Result<Attr> {
        Ok(Attr {
            attr: self.attr_of(ino)?,
            ttl: self.ttl,
        })
    }

    async fn readlink(&self, _ctx: &RequestContext, ino: u64) -> Result<Vec<u8>> {
        match self.tree_read().nodes.get(&ino).map(|n| &n.kind) {
            Some(NodeKind::Symlink(target)) => Ok(target.clone()),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    async fn open(&self, _ctx: &RequestContext, ino: u64, _flags: u32) -> Result<Opened> {
        let mut content = self.content_of(ino)?;
        // Parks this request (only this one) until the content is settled.
        let state = content
            .wait_for(|state| !matches!(state, ContentState::Pending))
            .await
            .map_err(|_| Errno::EIO)?
            .clone();
        match state {
            ContentState::Ready(_) => Ok(Opened {
                fh: 0,
                keep_cache: true,
                direct_io: false,
            }),
            ContentState::Failed | ContentState::Pending => Err(Errno::EIO),
        }
    }

    async fn open_backed(&self, ctx: &RequestContext, ino: u64, flags: u32) -> Result<OpenedFile> {
        let opened = self.open(ctx, ino, flags).await?;
        let backing = match &*self.content_of(ino)?.borrow() {
            ContentState::Ready(Content::File(file))
                if self.passthrough.load(Ordering::Relaxed) =>
            {
                Some(Arc::clone(file))
            }
            _ => None,
        };
        Ok(OpenedFile {
            opened,
            backing,
            noflush: false,
        })
    }

    async fn read(
        &self,
        _ctx: &RequestContext,
        ino: u64,
        _fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<ReadData> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let state = self.content_of(ino)?.borrow().clone();
        match state {
            ContentState::Ready(Content::File(file)) => Ok(ReadData::File { file, offset }),
            ContentState::Ready(Content::Bytes(bytes)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Ok(ReadData::Bytes(bytes[start..end].to_vec()))
            }
            ContentState::Pending | ContentState::Failed => Err(Errno::EIO),
        }
    }

    async fn readdir(
        &self,
        _ctx: &RequestContext,
        ino: u64,
        _fh: u64,
        offset: u64,
        _size: u32,
    ) -> Result<Vec<DirEntry>> {
        let tree = self.tree_read();
        let Some(NodeKind::Directory { parent, children }) = tree.nodes.get(&ino).map(|n| &n.kind)
        else {
            return Err(Errno::ENOTDIR);
        };
        let dots = [(OsString::from("."), ino), (OsString::from(".."), *parent)];
        let all = dots
            .into_iter()
            .chain(children.iter().map(|(name, child)| (name.clone(), *child)));
        let mut entries = Vec::new();
        for (index, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = tree
                .nodes
                .get(&child)
                .map(|n| n.attr.kind)
                .unwrap_or(FileKind::File);
            entries.push(DirEntry {
                ino: child,
                kind,
                name,
                next_offset: index as u64 + 1,
            });
        }
        Ok(entries)
    }

    async fn getxattr(&self, _ctx: &RequestContext, ino: u64, name: &OsStr) -> Result<XattrValue> {
        let tree = self.tree_read();
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        node.xattrs.get(name).cloned().ok_or(Errno::ENODATA)
    }

    async fn listxattr(&self, _ctx: &RequestContext, ino: u64) -> Result<XattrValue> {
        let tree = self.tree_read();
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let mut names = Vec::new();
        for name in node.xattrs.keys() {
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        Ok(names)
    }

    async fn statfs(&self, _ctx: &RequestContext, _ino: u64) -> Result<StatFs> {
        let tree = self.tree_read();
        let bytes: u64 = tree.nodes.values().map(|n| n.attr.size).sum();
        Ok(StatFs {
            blocks: bytes.div_ceil(4096),
            files: tree.nodes.len() as u64,
            bsize: 4096,
            frsize: 4096,
            namelen: 255,
            ..StatFs::default()
        })
    }

    async fn access(&self, _ctx: &RequestContext, ino: u64, _mask: u32) -> Result<()> {
        self.attr_of(ino).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        RequestContext {
            unique: 1,
            uid: 0,
            gid: 0,
            pid: 1,
        }
    }

    #[tokio::test]
    async fn open_waits_for_fulfil_and_reads_exact_bytes() {
        let fs = MemFs::new(Duration::from_secs(1));
        let ino = fs.add_file(ROOT, "a", 5).unwrap();
        let fs2 = fs.clone();
        let open = tokio::spawn(async move { fs2.open(&ctx(), ino, 0).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!open.is_finished());
        fs.fulfil(ino, Content::Bytes(Arc::from(&b"hello"[..])))
            .unwrap();
        assert!(open.await.unwrap().unwrap().keep_cache);
        let Ok(ReadData::Bytes(bytes)) = fs.read(&ctx(), ino, 0, 1, 10).await else {
            panic!("expected bytes");
        };
        assert_eq!(bytes, b"ello");
    }

    #[tokio::test]
    async fn failed_file_opens_with_eio_and_names_are_checked() {
        let fs = MemFs::new(Duration::ZERO);
        let dir = fs.mkdir(ROOT, "d").unwrap();
        let ino = fs.add_file(dir, "f", 1).unwrap();
        fs.fail(ino).unwrap();
        assert_eq!(fs.open(&ctx(), ino, 0).await, Err(Errno::EIO));
        assert_eq!(fs.add_file(dir, "f", 1), Err(Errno::new(libc::EEXIST)));
        assert_eq!(fs.add_file(ROOT, "../x", 1), Err(Errno::EINVAL));
        assert_eq!(fs.add_file(ino, "x", 1), Err(Errno::ENOTDIR));
        let names: Vec<_> = fs
            .readdir(&ctx(), ROOT, 0, 0, 4096)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [".", "..", "d"]);
        assert_eq!(fs.getattr(&ctx(), ROOT, None).await.unwrap().attr.nlink, 3);
    }
}
