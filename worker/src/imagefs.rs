//! The filesystem of one image: a read-only [`uring_fs::Filesystem`] over
//! the merged table of contents of a bundle header.
//!
//! The tree is built from the TOC alone, so lookup, getattr, readdir,
//! readlink and the xattr calls answer at once. Inode numbers follow the
//! TOC (root = 1); hard links share the inode of their target, unless a
//! later layer deleted or replaced it: then the link keeps its own layer's
//! content on an inode of its own, as on overlayfs. An open of a
//! regular file whose content is in the store succeeds at once; otherwise
//! it parks on that content's waiter ([`ContentWaiters`]) until the
//! receiver settles it: ready → served from the store, failed → `EIO`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, warn};
use transport_quic::{EntryKind, Header, TocEntry};
use uring_fs::{
    Attr, DirEntry, Entry, Errno, FileAttr, FileKind, Filesystem, Opened, ReadData, RequestContext,
    StatFs, XattrValue,
};

use crate::store::Store;
use crate::trace::OpenTrace;
use crate::waiters::{ContentState, ContentWaiters};

/// The inode number of the root directory.
pub const ROOT: u64 = 1;

/// Why a table of contents cannot be turned into a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A path names a parent that is not a directory.
    #[error("{path}: a parent is not a directory")]
    NotADirectory {
        /// The entry's path.
        path: String,
    },
    /// A path is empty after normalization, or has `.`/`..` components.
    #[error("{path:?}: invalid path")]
    InvalidPath {
        /// The entry's path.
        path: String,
    },
    /// A hard link names no file (its path is the root).
    #[error("{path:?}: hard link to {target:?} without a name of its own")]
    BadHardlink {
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
}

/// The entries of a directory. While the tree is built names are only
/// appended (the builder's path map keeps them unique); [`Children::seal`]
/// then sorts them once. A lookup is a binary search, and a readdir offset is
/// an index into the vector, so every readdir call continues where the last
/// one stopped: listing a directory is linear in its size.
#[derive(Debug, Default)]
struct Children(Vec<(OsString, u64)>);

impl Children {
    fn push(&mut self, name: &str, ino: u64) {
        self.0.push((name.into(), ino));
    }

    fn seal(&mut self) {
        self.0.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.0.shrink_to_fit();
    }

    fn get(&self, name: &OsStr) -> Option<u64> {
        self.0
            .binary_search_by(|(n, _)| n.as_os_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1)
    }

    /// The entry at readdir position `index` (0 `.`, 1 `..`, then the children).
    fn at(&self, index: u64, dir: u64, parent: u64) -> Option<(&OsStr, u64)> {
        match index {
            0 => Some((OsStr::new("."), dir)),
            1 => Some((OsStr::new(".."), parent)),
            i => {
                let (name, ino) = self.0.get(usize::try_from(i - 2).ok()?)?;
                Some((name.as_os_str(), *ino))
            }
        }
    }
}

/// Bytes a `struct fuse_dirent` named `name` takes in a readdir reply.
fn dirent_len(name: &OsStr) -> usize {
    24 + name.len().div_ceil(8) * 8
}

#[derive(Debug)]
enum NodeData {
    Dir {
        parent: u64,
        children: Children,
    },
    Symlink(Vec<u8>),
    /// A regular file: its content (none if empty) and its TOC index.
    File(Option<[u8; 32]>, u32),
    Special,
}

#[derive(Debug)]
struct Node {
    attr: FileAttr,
    data: NodeData,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn components(path: &str) -> Result<Vec<&str>, TreeError> {
    let parts: Vec<&str> = path
        .trim_start_matches("./")
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(TreeError::InvalidPath { path: path.into() });
    }
    Ok(parts)
}

/// The kernel's encoding of a device number (`new_encode_dev`).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn attr_of(ino: u64, e: &TocEntry) -> FileAttr {
    let kind = match e.kind {
        EntryKind::Dir => FileKind::Directory,
        EntryKind::File | EntryKind::Hardlink => FileKind::File,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::CharDev => FileKind::CharDevice,
        EntryKind::BlockDev => FileKind::BlockDevice,
        EntryKind::Fifo => FileKind::Fifo,
    };
    let size = match e.kind {
        // A hard link carries its own layer's content size (see `ImageFs::new`).
        EntryKind::File | EntryKind::Hardlink => e.size,
        EntryKind::Symlink => e.link.as_ref().map_or(0, |l| l.len() as u64),
        _ => 0,
    };
    let mut attr = FileAttr::new(ino, kind, (e.mode & 0o7777) as u16, size);
    let mtime = if e.mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(e.mtime as u64, e.mtime_nsec.min(999_999_999))
    } else {
        SystemTime::UNIX_EPOCH
    };
    attr.atime = mtime;
    attr.mtime = mtime;
    attr.ctime = mtime;
    attr.uid = u32::try_from(e.uid).unwrap_or(u32::MAX);
    attr.gid = u32::try_from(e.gid).unwrap_or(u32::MAX);
    if matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev) {
        attr.rdev = encode_dev(e.devmajor, e.devminor);
    }
    attr
}

/// The filesystem of one image.
pub struct ImageFs {
    nodes: Vec<Node>,
    store: Arc<Store>,
    waiters: Arc<ContentWaiters>,
    ttl: Duration,
    /// Open handles: the inode each was opened for and its content file.
    handles: Mutex<HashMap<u64, (u64, Arc<File>)>>,
    next_fh: AtomicU64,
    trace: Option<Arc<OpenTrace>>,
}

impl std::fmt::Debug for ImageFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFs")
            .field("inodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl ImageFs {
    /// The tree of `header`'s table of contents, served from `store`, with
    /// opens of missing contents waiting on `waiters`. `ttl` is the cache
    /// timeout given to the kernel (the tree never changes).
    pub fn new(
        header: &Header,
        store: Arc<Store>,
        waiters: Arc<ContentWaiters>,
        ttl: Duration,
    ) -> Result<ImageFs, TreeError> {
        let mut root_attr = FileAttr::new(ROOT, FileKind::Directory, 0o755, 0);
        root_attr.mtime = SystemTime::UNIX_EPOCH;
        let mut nodes = vec![Node {
            attr: root_attr,
            data: NodeData::Dir {
                parent: ROOT,
                children: Children::default(),
            },
            xattrs: Vec::new(),
        }];
        let mut by_path: HashMap<String, u64> = HashMap::from([(String::new(), ROOT)]);
        // Hard links last: their targets may sort after them.
        let links = header
            .toc
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::Hardlink);
        for (index, e) in header
            .toc
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind != EntryKind::Hardlink)
        {
            let parts = components(&e.path)?;
            if parts.is_empty() {
                // The root itself: take its metadata.
                if e.kind == EntryKind::Dir {
                    let attr = attr_of(ROOT, e);
                    nodes[0].attr = FileAttr {
                        nlink: nodes[0].attr.nlink,
                        ..attr
                    };
                    nodes[0].xattrs = e.xattrs.clone();
                }
                continue;
            }
            let parent = Self::ensure_dirs(&mut nodes, &mut by_path, &parts, &e.path)?;
            let name = parts[parts.len() - 1];
            let full = parts.join("/");
            if let Some(&existing) = by_path.get(&full) {
                // An implicit directory met its own entry: take its metadata.
                let node = &mut nodes[(existing - 1) as usize];
                if e.kind == EntryKind::Dir && matches!(node.data, NodeData::Dir { .. }) {
                    let nlink = node.attr.nlink;
                    node.attr = FileAttr {
                        nlink,
                        ..attr_of(existing, e)
                    };
                    node.xattrs = e.xattrs.clone();
                }
                continue;
            }
            let ino = nodes.len() as u64 + 1;
            let data = match e.kind {
                EntryKind::Dir => NodeData::Dir {
                    parent,
                    children: Children::default(),
                },
                EntryKind::File => NodeData::File(
                    e.sha256.filter(|_| e.size > 0),
                    u32::try_from(index).unwrap_or(u32::MAX),
                ),
                EntryKind::Symlink => {
                    NodeData::Symlink(e.link.clone().unwrap_or_default().into_bytes())
                }
                _ => NodeData::Special,
            };
            nodes.push(Node {
                attr: attr_of(ino, e),
                data,
                xattrs: e.xattrs.clone(),
            });
            Self::link(&mut nodes, parent, name, ino, e.kind == EntryKind::Dir);
            by_path.insert(full, ino);
        }
        // A hard link shares its target's inode only if the target is still
        // the file of the link's own layer (same layer, same content). If a
        // later layer deleted or replaced the target, the link keeps the
        // content and metadata its own layer gave it, as on overlayfs, where
        // it stays a name of the lower layer's inode: the links left of one
        // such inode share one node, whose link count also counts the
        // target's lost name (as the lower inode's does).
        let toc_by_path: HashMap<&str, &TocEntry> =
            header.toc.iter().map(|e| (e.path.as_str(), e)).collect();
        let mut orphans: HashMap<(u32, String, Option<[u8; 32]>), u64> = HashMap::new();
        for (index, e) in links {
            let parts = components(&e.path)?;
            let Some(name) = parts.last() else {
                return Err(TreeError::BadHardlink {
                    path: e.path.clone(),
                    target: e.link.clone().unwrap_or_default(),
                });
            };
            let parent = Self::ensure_dirs(&mut nodes, &mut by_path, &parts, &e.path)?;
            let full = parts.join("/");
            if by_path.contains_key(&full) {
                continue;
            }
            let target = e
                .link
                .as_deref()
                .and_then(|t| components(t).ok())
                .map(|t| t.join("/"))
                .unwrap_or_default();
            let intact = toc_by_path.get(target.as_str()).and_then(|te| {
                let ino = *by_path.get(&target)?;
                let same = te.kind == EntryKind::File
                    && te.layer == e.layer
                    && te.sha256 == e.sha256
                    && te.size == e.size
                    && matches!(nodes[(ino - 1) as usize].data, NodeData::File(..));
                same.then_some(ino)
            });
            let key = (e.layer, target, e.sha256);
            let ino = match intact.or_else(|| orphans.get(&key).copied()) {
                Some(ino) => {
                    nodes[(ino - 1) as usize].attr.nlink += 1;
                    ino
                }
                None => {
                    let ino = nodes.len() as u64 + 1;
                    let mut attr = attr_of(ino, e);
                    attr.nlink = 2;
                    nodes.push(Node {
                        attr,
                        data: NodeData::File(
                            e.sha256.filter(|_| e.size > 0),
                            u32::try_from(index).unwrap_or(u32::MAX),
                        ),
                        xattrs: e.xattrs.clone(),
                    });
                    orphans.insert(key, ino);
                    ino
                }
            };
            Self::link(&mut nodes, parent, name, ino, false);
            by_path.insert(full, ino);
        }
        for node in &mut nodes {
            if let NodeData::Dir { children, .. } = &mut node.data {
                children.seal();
            }
        }
        Ok(ImageFs {
            nodes,
            store,
            waiters,
            ttl,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            trace: None,
        })
    }

    /// Reports the first open of each file to `trace` (while it is enabled).
    pub fn with_trace(mut self, trace: Arc<OpenTrace>) -> ImageFs {
        self.trace = Some(trace);
        self
    }

    /// Makes sure the parent directories of `parts` exist (implicit ones get
    /// mode 0755); returns the inode of the last parent.
    fn ensure_dirs(
        nodes: &mut Vec<Node>,
        by_path: &mut HashMap<String, u64>,
        parts: &[&str],
        path: &str,
    ) -> Result<u64, TreeError> {
        let mut parent = ROOT;
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            parent = match by_path.get(&dir) {
                Some(&ino) => {
                    if !matches!(nodes[(ino - 1) as usize].data, NodeData::Dir { .. }) {
                        return Err(TreeError::NotADirectory { path: path.into() });
                    }
                    ino
                }
                None => {
                    let ino = nodes.len() as u64 + 1;
                    nodes.push(Node {
                        attr: FileAttr::new(ino, FileKind::Directory, 0o755, 0),
                        data: NodeData::Dir {
                            parent,
                            children: Children::default(),
                        },
                        xattrs: Vec::new(),
                    });
                    Self::link(nodes, parent, parts[depth - 1], ino, true);
                    by_path.insert(dir, ino);
                    ino
                }
            };
        }
        Ok(parent)
    }

    fn link(nodes: &mut [Node], parent: u64, name: &str, ino: u64, is_dir: bool) {
        let node = &mut nodes[(parent - 1) as usize];
        if let NodeData::Dir { children, .. } = &mut node.data {
            children.push(name, ino);
        }
        if is_dir {
            node.attr.nlink += 1;
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(Errno::ENOENT)
    }

    /// The number of inodes of the tree.
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    /// The path of TOC entry `index`, for logs (known when traced).
    fn path_of(&self, index: u32) -> &str {
        self.trace
            .as_ref()
            .and_then(|t| t.path(index))
            .unwrap_or("?")
    }

    /// The stored content of file `ino`, for a handle this process did not
    /// open.
    fn reopen(&self, ino: u64) -> Result<Arc<File>, Errno> {
        let NodeData::File(Some(sha), _) = &self.node(ino)?.data else {
            return Err(Errno::EBADF);
        };
        if !self.store.has(sha) {
            return Err(Errno::EBADF);
        }
        let file = self.store.open_content(sha).map_err(|e| {
            error!(ino, sha256 = %hex::encode(sha), "cannot open stored content: {e}");
            Errno::EIO
        })?;
        Ok(Arc::new(file))
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, Arc<File>)>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Filesystem for ImageFs {
    async fn lookup(
        &self,
        _ctx: &RequestContext,
        parent: u64,
        name: &OsStr,
    ) -> Result<Entry, Errno> {
        let NodeData::Dir { children, .. } = &self.node(parent)?.data else {
            return Err(Errno::ENOTDIR);
        };
        let ino = children.get(name).ok_or(Errno::ENOENT)?;
        Ok(Entry {
            attr: self.node(ino)?.attr.clone(),
            generation: 0,
            attr_ttl: self.ttl,
            entry_ttl: self.ttl,
        })
    }

    async fn getattr(
        &self,
        _ctx: &RequestContext,
        ino: u64,
        _fh: Option<u64>,
    ) -> Result<Attr, Errno> {
        Ok(Attr {
            attr: self.node(ino)?.attr.clone(),
            ttl: self.ttl,
        })
    }

    async fn readlink(&self, _ctx: &RequestContext, ino: u64) -> Result<Vec<u8>, Errno> {
        match &self.node(ino)?.data {
            NodeData::Symlink(target) => Ok(target.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    async fn open(&self, _ctx: &RequestContext, ino: u64, flags: u32) -> Result<Opened, Errno> {
        if flags & (libc::O_ACCMODE as u32) != libc::O_RDONLY as u32 {
            return Err(Errno::EROFS);
        }
        let began = Instant::now();
        let (sha, index) = match &self.node(ino)?.data {
            NodeData::File(sha, index) => (*sha, *index),
            NodeData::Dir { .. } => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        };
        let Some(sha) = sha else {
            // Empty file: nothing to wait for.
            if let Some(t) = &self.trace {
                t.record(index, began, Duration::ZERO);
            }
            return Ok(Opened {
                fh: 0,
                keep_cache: true,
                direct_io: false,
            });
        };
        if !self.store.has(&sha) {
            // Parks this request only, until the content is settled.
            let parked = Instant::now();
            let state = self.waiters.wait(&sha).await;
            crate::metrics::global().blocked_open(parked, state == Some(ContentState::Ready));
            match state {
                Some(ContentState::Ready) => {}
                Some(ContentState::Failed) | Some(ContentState::Pending) => {
                    warn!(
                        ino,
                        path = self.path_of(index),
                        sha256 = %hex::encode(sha),
                        "open failed with EIO: the content did not arrive (corrupt, or the bundle stream broke)"
                    );
                    return Err(Errno::EIO);
                }
                None => {
                    error!(
                        ino,
                        path = self.path_of(index),
                        sha256 = %hex::encode(sha),
                        "open failed with EIO: the content is neither stored nor expected (pull the image again)"
                    );
                    return Err(Errno::EIO);
                }
            }
        }
        let file = self.store.open_content(&sha).map_err(|e| {
            error!(ino, sha256 = %hex::encode(sha), "cannot open stored content: {e}");
            Errno::EIO
        })?;
        if let Some(t) = &self.trace {
            t.record(index, began, began.elapsed());
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, (ino, Arc::new(file)));
        Ok(Opened {
            fh,
            keep_cache: true,
            direct_io: false,
        })
    }

    async fn read(
        &self,
        _ctx: &RequestContext,
        ino: u64,
        fh: u64,
        offset: u64,
        _size: u32,
    ) -> Result<ReadData, Errno> {
        if fh == 0 {
            return Ok(ReadData::Bytes(Vec::new()));
        }
        let known = self.handles().get(&fh).cloned();
        let file = match known {
            Some((opened_ino, file)) if opened_ino == ino => file,
            // A handle opened by an earlier starlightd that served this same
            // connection (hand-over, restart): its number means nothing
            // here, or names another file. The inode does: reopen its
            // content, which was stored when that open succeeded.
            other => {
                let file = self.reopen(ino)?;
                if other.is_none() {
                    self.handles().insert(fh, (ino, file.clone()));
                }
                file
            }
        };
        Ok(ReadData::File { file, offset })
    }

    async fn release(&self, _ctx: &RequestContext, _ino: u64, fh: u64) -> Result<(), Errno> {
        self.handles().remove(&fh);
        Ok(())
    }

    async fn readdir(
        &self,
        _ctx: &RequestContext,
        ino: u64,
        _fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntry>, Errno> {
        let NodeData::Dir { parent, children } = &self.node(ino)?.data else {
            return Err(Errno::ENOTDIR);
        };
        // The offset is the position of the next entry: start right there,
        // and stop once the reply buffer is full.
        let mut entries = Vec::new();
        let mut used = 0usize;
        let mut index = offset;
        while let Some((name, child)) = children.at(index, ino, *parent) {
            used += dirent_len(name);
            if used > size as usize {
                break;
            }
            index += 1;
            entries.push(DirEntry {
                ino: child,
                kind: self.node(child)?.attr.kind,
                name: name.to_os_string(),
                next_offset: index,
            });
        }
        Ok(entries)
    }

    async fn getxattr(
        &self,
        _ctx: &RequestContext,
        ino: u64,
        name: &OsStr,
    ) -> Result<XattrValue, Errno> {
        self.node(ino)?
            .xattrs
            .iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .map(|(_, v)| v.clone())
            .ok_or(Errno::ENODATA)
    }

    async fn listxattr(&self, _ctx: &RequestContext, ino: u64) -> Result<XattrValue, Errno> {
        let mut names = Vec::new();
        for (name, _) in &self.node(ino)?.xattrs {
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        Ok(names)
    }

    async fn statfs(&self, _ctx: &RequestContext, _ino: u64) -> Result<StatFs, Errno> {
        let bytes: u64 = self.nodes.iter().map(|n| n.attr.size).sum();
        Ok(StatFs {
            blocks: bytes.div_ceil(4096),
            files: self.nodes.len() as u64,
            bsize: 4096,
            frsize: 4096,
            namelen: 255,
            ..StatFs::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sha2::{Digest, Sha256};
    use transport_quic::Source;

    fn ctx() -> RequestContext {
        RequestContext {
            unique: 1,
            uid: 0,
            gid: 0,
            pid: 1,
        }
    }

    fn entry(path: &str, kind: EntryKind) -> TocEntry {
        TocEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            size: 0,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
            sha256: None,
            layer: 0,
            source: Source::NoContent,
        }
    }

    fn file(path: &str, data: &[u8], source: Source) -> TocEntry {
        TocEntry {
            size: data.len() as u64,
            sha256: Some(Sha256::digest(data).into()),
            source,
            ..entry(path, EntryKind::File)
        }
    }

    fn header() -> Header {
        let mut dir = entry("etc", EntryKind::Dir);
        dir.mode = 0o750;
        dir.xattrs = vec![("user.k".into(), b"v".to_vec())];
        // As the scanner gives it: the target's content and metadata.
        let link = TocEntry {
            kind: EntryKind::Hardlink,
            link: Some("usr/bin/tool".into()),
            ..file("etc/hard", b"tool bytes", Source::Payload(0))
        };
        let mut sym = entry("etc/sym", EntryKind::Symlink);
        sym.link = Some("../usr/bin/tool".into());
        let mut dev = entry("dev/null", EntryKind::CharDev);
        (dev.devmajor, dev.devminor) = (1, 3);
        Header {
            toc: vec![
                dev,
                dir,
                entry("etc/empty", EntryKind::File),
                link,
                file("etc/passwd", b"root\n", Source::Held),
                sym,
                file("usr/bin/tool", b"tool bytes", Source::Payload(0)),
            ],
            ..Header::default()
        }
    }

    async fn lookup_path(fs: &ImageFs, path: &str) -> Entry {
        let mut ino = ROOT;
        let mut last = None;
        for part in path.split('/') {
            let e = fs.lookup(&ctx(), ino, OsStr::new(part)).await.unwrap();
            ino = e.attr.ino;
            last = Some(e);
        }
        last.unwrap()
    }

    #[tokio::test]
    async fn metadata_comes_from_the_toc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let fs = ImageFs::new(
            &header(),
            store,
            Arc::new(ContentWaiters::new()),
            Duration::from_secs(1),
        )
        .unwrap();
        let etc = lookup_path(&fs, "etc").await;
        assert_eq!(etc.attr.perm, 0o750);
        assert_eq!((etc.attr.uid, etc.attr.gid), (1000, 100));
        assert_eq!(
            etc.attr.mtime,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );
        let tool = lookup_path(&fs, "usr/bin/tool").await;
        let hard = lookup_path(&fs, "etc/hard").await;
        assert_eq!(tool.attr.ino, hard.attr.ino);
        assert_eq!(tool.attr.nlink, 2);
        assert_eq!(tool.attr.size, 10);
        let sym = lookup_path(&fs, "etc/sym").await;
        assert_eq!(sym.attr.kind, FileKind::Symlink);
        assert_eq!(
            fs.readlink(&ctx(), sym.attr.ino).await.unwrap(),
            b"../usr/bin/tool"
        );
        let null = lookup_path(&fs, "dev/null").await;
        assert_eq!(null.attr.kind, FileKind::CharDevice);
        assert_eq!(null.attr.rdev, (1 << 8) | 3);
        // Implicit directories: dev, usr, usr/bin.
        assert_eq!(lookup_path(&fs, "usr/bin").await.attr.perm, 0o755);
        let names: Vec<_> = fs
            .readdir(&ctx(), etc.attr.ino, 0, 0, 4096)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name.into_string().unwrap())
            .collect();
        assert_eq!(names, [".", "..", "empty", "hard", "passwd", "sym"]);
        assert_eq!(
            fs.getxattr(&ctx(), etc.attr.ino, OsStr::new("user.k"))
                .await
                .unwrap(),
            b"v"
        );
        assert_eq!(
            fs.listxattr(&ctx(), etc.attr.ino).await.unwrap(),
            b"user.k\0"
        );
        // Root nlink: 2 + etc, dev, usr.
        assert_eq!(fs.getattr(&ctx(), ROOT, None).await.unwrap().attr.nlink, 5);
        assert_eq!(
            fs.lookup(&ctx(), ROOT, OsStr::new("nope"))
                .await
                .unwrap_err(),
            Errno::ENOENT
        );
    }

    /// After a hand-over the kernel sends reads with handles the previous
    /// starlightd gave out: unknown here, or colliding with this process's
    /// own. Each reads the content of the inode it names.
    #[tokio::test]
    async fn handles_of_an_earlier_process_read_by_their_inode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let waiters = Arc::new(ContentWaiters::new());
        let fs = ImageFs::new(&header(), store.clone(), waiters, Duration::ZERO).unwrap();
        let tool_sha: [u8; 32] = Sha256::digest(b"tool bytes").into();
        store.insert_bytes(b"tool bytes", &tool_sha).unwrap();
        let tool = lookup_path(&fs, "usr/bin/tool").await.attr.ino;
        let content = |data: ReadData| {
            let ReadData::File { file, offset } = data else {
                panic!("not a file reply");
            };
            let mut buf = vec![0u8; 64];
            let n = std::os::unix::fs::FileExt::read_at(&*file, &mut buf, offset).unwrap();
            buf.truncate(n);
            buf
        };
        // Unknown handle.
        let got = fs.read(&ctx(), tool, 77, 5, 100).await.unwrap();
        assert_eq!(content(got), b"bytes");
        // A handle number this process gave to another inode.
        let passwd = lookup_path(&fs, "etc/passwd").await.attr.ino;
        let passwd_sha: [u8; 32] = Sha256::digest(b"root\n").into();
        store.insert_bytes(b"root\n", &passwd_sha).unwrap();
        let opened = fs.open(&ctx(), passwd, 0).await.unwrap();
        let got = fs.read(&ctx(), tool, opened.fh, 0, 100).await.unwrap();
        assert_eq!(content(got), b"tool bytes");
        let got = fs.read(&ctx(), passwd, opened.fh, 0, 100).await.unwrap();
        assert_eq!(content(got), b"root\n");
        // An inode that does not exist: refused.
        assert!(fs.read(&ctx(), passwd + 1000, 78, 0, 10).await.is_err());
    }

    #[tokio::test]
    async fn opens_wait_for_content_and_fail_with_eio() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let waiters = Arc::new(ContentWaiters::new());
        let fs = Arc::new(
            ImageFs::new(&header(), store.clone(), waiters.clone(), Duration::ZERO).unwrap(),
        );
        let tool_sha: [u8; 32] = Sha256::digest(b"tool bytes").into();
        waiters.announce(tool_sha);
        let tool = lookup_path(&fs, "usr/bin/tool").await.attr.ino;
        let fs2 = fs.clone();
        let open = tokio::spawn(async move { fs2.open(&ctx(), tool, 0).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!open.is_finished());
        // Metadata still answers while the open waits.
        assert!(fs.getattr(&ctx(), tool, None).await.is_ok());
        store.insert_bytes(b"tool bytes", &tool_sha).unwrap();
        waiters.set(tool_sha, ContentState::Ready);
        let opened = tokio::time::timeout(Duration::from_secs(5), open)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(opened.keep_cache);
        let ReadData::File { file, offset } =
            fs.read(&ctx(), tool, opened.fh, 5, 100).await.unwrap()
        else {
            panic!("expected a file");
        };
        assert_eq!(offset, 5);
        let mut buf = [0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset).unwrap();
        assert_eq!(&buf, b"bytes");
        fs.release(&ctx(), tool, opened.fh).await.unwrap();
        // Held but missing from the store, never announced: EIO at once.
        let passwd = lookup_path(&fs, "etc/passwd").await.attr.ino;
        assert_eq!(fs.open(&ctx(), passwd, 0).await.unwrap_err(), Errno::EIO);
        // Failed content: EIO.
        let sha: [u8; 32] = Sha256::digest(b"root\n").into();
        waiters.set(sha, ContentState::Failed);
        assert_eq!(fs.open(&ctx(), passwd, 0).await.unwrap_err(), Errno::EIO);
        // Empty files open at once and read empty; writes are refused.
        let empty = lookup_path(&fs, "etc/empty").await.attr.ino;
        let o = fs.open(&ctx(), empty, 0).await.unwrap();
        assert!(matches!(
            fs.read(&ctx(), empty, o.fh, 0, 10).await.unwrap(),
            ReadData::Bytes(b) if b.is_empty()
        ));
        assert_eq!(
            fs.open(&ctx(), empty, libc::O_RDWR as u32)
                .await
                .unwrap_err(),
            Errno::EROFS
        );
    }

    #[tokio::test]
    async fn readdir_continues_at_its_offset_and_fills_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // Children in reverse order: the tree sorts them once.
        let toc = (0..1000)
            .rev()
            .map(|i| entry(&format!("d/f{i:04}"), EntryKind::File))
            .collect();
        let h = Header {
            toc,
            ..Header::default()
        };
        let fs = ImageFs::new(&h, store, Arc::new(ContentWaiters::new()), Duration::ZERO).unwrap();
        let d = lookup_path(&fs, "d").await.attr.ino;
        assert_eq!(lookup_path(&fs, "d/f0500").await.attr.kind, FileKind::File);
        let mut names = Vec::new();
        let mut offset = 0;
        let mut calls = 0;
        loop {
            let page = fs.readdir(&ctx(), d, 0, offset, 4096).await.unwrap();
            let Some(last) = page.last() else { break };
            // Each page fills at most the buffer, and at least most of it.
            let bytes: usize = page.iter().map(|e| dirent_len(&e.name)).sum();
            assert!(bytes <= 4096, "{bytes}");
            assert!(last.next_offset == 1002 || bytes > 4096 - 32, "{bytes}");
            offset = last.next_offset;
            names.extend(page.into_iter().map(|e| e.name.into_string().unwrap()));
            calls += 1;
        }
        let want: Vec<String> = [".".to_string(), "..".to_string()]
            .into_iter()
            .chain((0..1000).map(|i| format!("f{i:04}")))
            .collect();
        assert_eq!(names, want);
        // 32 bytes per entry: 128 per page.
        assert_eq!(calls, 1002usize.div_ceil(128));
        // Past the end, and a buffer too small for one entry: nothing.
        assert!(fs
            .readdir(&ctx(), d, 0, 5000, 4096)
            .await
            .unwrap()
            .is_empty());
        assert!(fs.readdir(&ctx(), d, 0, 0, 16).await.unwrap().is_empty());
    }

    #[test]
    fn bad_trees_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let waiters = Arc::new(ContentWaiters::new());
        let bad = [
            vec![file("f", b"x", Source::Held), entry("f/g", EntryKind::Dir)],
            vec![entry("a/../b", EntryKind::Dir)],
        ];
        for toc in bad {
            let h = Header {
                toc,
                ..Header::default()
            };
            assert!(ImageFs::new(&h, store.clone(), waiters.clone(), Duration::ZERO).is_err());
        }
    }

    /// A hard link whose target a later layer deleted or replaced keeps the
    /// content (and metadata) of its own layer, on an inode of its own, as
    /// on overlayfs; one whose target is intact shares the target's inode.
    #[tokio::test]
    async fn hard_links_keep_their_own_layer_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let old = b"old bytes".to_vec();
        let sha: [u8; 32] = Sha256::digest(&old).into();
        store.insert_bytes(&old, &sha).unwrap();
        let link = |path: &str, target: &str| TocEntry {
            kind: EntryKind::Hardlink,
            link: Some(target.into()),
            mode: 0o755,
            ..file(path, &old, Source::Held)
        };
        let replaced = TocEntry {
            layer: 1,
            ..file("bin/a", b"new bytes!", Source::Payload(0))
        };
        let h = Header {
            toc: vec![
                entry("bin", EntryKind::Dir),
                replaced,
                link("bin/b", "bin/a"),
                link("bin/b2", "bin/a"),
                link("bin/gone", "bin/deleted"),
                file("bin/same", &old, Source::Held),
                link("bin/same-link", "bin/same"),
            ],
            ..Header::default()
        };
        let fs = ImageFs::new(
            &h,
            store,
            Arc::new(ContentWaiters::new()),
            Duration::from_secs(1),
        )
        .unwrap();
        for path in ["bin/b", "bin/gone"] {
            let e = lookup_path(&fs, path).await;
            assert_eq!(e.attr.kind, FileKind::File, "{path}");
            assert_eq!(e.attr.size, old.len() as u64, "{path}");
            assert_eq!(e.attr.perm, 0o755, "{path}");
            // The lower inode's names: the lost target's and the links'.
            let nlink = if path == "bin/b" { 3 } else { 2 };
            assert_eq!(e.attr.nlink, nlink, "{path}");
            let fh = fs.open(&ctx(), e.attr.ino, 0).await.unwrap();
            let ReadData::File { file, offset } =
                fs.read(&ctx(), e.attr.ino, fh.fh, 0, 100).await.unwrap()
            else {
                panic!("{path}: expected a file");
            };
            let mut buf = vec![0u8; old.len()];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset).unwrap();
            assert_eq!(buf, old, "{path}");
        }
        let a = lookup_path(&fs, "bin/a").await;
        let b = lookup_path(&fs, "bin/b").await;
        assert_ne!(a.attr.ino, b.attr.ino);
        assert_eq!(a.attr.size, 10);
        assert_eq!(a.attr.nlink, 1);
        // Two links left of one lower inode stay one inode.
        assert_eq!(lookup_path(&fs, "bin/b2").await.attr.ino, b.attr.ino);
        assert_ne!(lookup_path(&fs, "bin/gone").await.attr.ino, b.attr.ino);
        let same = lookup_path(&fs, "bin/same").await;
        let same_link = lookup_path(&fs, "bin/same-link").await;
        assert_eq!(same.attr.ino, same_link.attr.ino);
        assert_eq!(same.attr.nlink, 2);
    }
}
