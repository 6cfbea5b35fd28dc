//! The content store: a directory of file contents keyed by their SHA-256
//! (`<root>/sha256/ab/abcdef…`), shared by all images.
//!
//! Contents are written to a temporary file under `<root>/tmp` (the same
//! filesystem), made read-only for the daemon alone (0400) and renamed into
//! place only once verified, so while the machine runs a path in the store
//! always holds exactly the bytes its name promises. Inserting a content
//! that is already there is a no-op.
//!
//! Every directory of the store is 0700 (created so, and set so at
//! [`Store::open`] when an older version left it open): images hold files
//! that are private inside the image, and local users must not read them
//! here. The image's own modes apply only through the mount.
//!
//! Crash safety ([`Durability`]). A content is renamed into place as soon
//! as it is verified, so waiting opens get it at once; while the machine
//! runs, the page cache holds exactly the verified bytes. What survives a
//! power loss is made safe in batches: [`Store::sync`] (one `syncfs`)
//! makes every content written so far durable, and the image manager
//! records an image complete (a synced RocksDB write) only after it. After
//! a restart a content is trusted only if such a complete record vouches
//! for it; every other one, which a crash may have left as a name over
//! zeros or a short file, is re-verified or dropped ([`crate::recovery`]).
//! So no content is ever trusted across a crash before it was durable,
//! for one `syncfs` per image instead of one `fdatasync` per content.
//! [`Durability::PerContent`] (`STARLIGHT_STORE_SYNC=content`) also
//! `fdatasync`s each content before its rename, so that no name at all
//! survives a crash without its bytes; it costs about 1–2 ms per content
//! on ext4 (one journal commit each): see the `measure_durability` test.
//!
//! Contents are written through io_uring ([`uring_writer`]) where the
//! kernel offers it, with plain `write(2)` otherwise (or when the
//! environment sets `STARLIGHT_STORE_IO=plain`): see [`ContentWriter`].

pub mod uring_writer;

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tracing::{info, warn};

use uring_writer::UringWriter;

/// The environment variable that forces plain writes (`plain`).
pub const STORE_IO_ENV: &str = "STARLIGHT_STORE_IO";

/// How the store writes contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Through io_uring where the kernel offers it, plain writes otherwise.
    Auto,
    /// Plain buffered `write(2)` only.
    Plain,
}

impl WriteMode {
    /// The mode an environment value asks for (`plain`, or anything else
    /// and nothing for [`WriteMode::Auto`]).
    pub fn from_env_value(value: Option<&str>) -> WriteMode {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("plain") => WriteMode::Plain,
            _ => WriteMode::Auto,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("content store {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Bytes given to [`Store::insert_bytes`] do not hash to the expected digest.
    #[error("content does not match its SHA-256: expected {expected}, got {actual}")]
    Digest {
        /// The expected digest (hex).
        expected: String,
        /// The digest of the bytes (hex).
        actual: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Mode of every directory of the store (and of the state directory).
pub const DIR_MODE: u32 = 0o700;
/// Mode of a stored content: read-only, for the daemon alone.
pub const CONTENT_MODE: u32 = 0o400;

/// Creates `dir` (and missing parents) closed to other users: a directory
/// this creates is [`DIR_MODE`], and `dir` itself is set to [`DIR_MODE`]
/// if it existed with another mode (logged). A symlink is refused.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err(dir))?;
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(io_err(dir)(io::Error::other("not a directory")));
    }
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        info!(
            path = %dir.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o7777),
            "closing a directory to other users (mode 700)"
        );
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// The environment variable that asks for a sync per content (`content`).
pub const STORE_SYNC_ENV: &str = "STARLIGHT_STORE_SYNC";

/// When a content's bytes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` each content before its rename: no name ever survives a
    /// crash without its bytes.
    PerContent,
    /// At [`Store::sync`] (the default): a crash may leave a content that no
    /// complete record vouches for torn, and recovery re-verifies it. Each
    /// content's write-out starts when it is stored, so the sync finds
    /// little left to write.
    Batch,
    /// Like [`Durability::Batch`], but nothing is written out before the
    /// sync (`late`): the kernel's own writeback, 30 s on. For the power-loss
    /// tests, whose simulated crash must find torn contents to recover.
    BatchLate,
}

impl Durability {
    /// The durability an environment value asks for (`content`, `late`, or
    /// anything else and nothing for [`Durability::Batch`]).
    pub fn from_env_value(value: Option<&str>) -> Durability {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("content") => Durability::PerContent,
            Some(v) if v.eq_ignore_ascii_case("late") => Durability::BatchLate,
            _ => Durability::Batch,
        }
    }
}

/// Starts writing `file`'s dirty pages to the disk without waiting for
/// them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works while the
/// bundle is still arriving, so the [`Store::sync`] that ends an image
/// finds little left to write. Durability still comes only from that sync;
/// a failure here is ignored (the sync reports what matters).
fn start_write_out(file: &File) {
    // SAFETY: sync_file_range on a file descriptor borrowed for the call;
    // offset 0 and length 0 mean the whole file.
    let _ = unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            0,
            0,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// Contents smaller than this are written with plain writes even where
/// io_uring is available (see [`Store::writer`]).
pub const PLAIN_BELOW: u64 = 64 << 10;

/// A content store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    mode: WriteMode,
    durability: Durability,
}

static ENV_LOGGED: AtomicBool = AtomicBool::new(false);
static RING_FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

impl Store {
    /// Opens (creating if needed) the store at `root`; leftover temporary
    /// files of an earlier run are removed. Writes go through io_uring
    /// unless [`STORE_IO_ENV`] says `plain`; contents are synced one by one
    /// if [`STORE_SYNC_ENV`] says `content`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let mode = WriteMode::from_env_value(std::env::var(STORE_IO_ENV).ok().as_deref());
        if mode == WriteMode::Plain && !ENV_LOGGED.swap(true, Ordering::Relaxed) {
            info!("{STORE_IO_ENV}=plain: the content store writes with plain write(2)");
        }
        let durability = Durability::from_env_value(std::env::var(STORE_SYNC_ENV).ok().as_deref());
        let store = Store {
            root,
            mode,
            durability,
        };
        let tmp = store.tmp_dir();
        let top = store.root.join("sha256");
        private_dir(&store.root)?;
        private_dir(&top)?;
        // The fan-out directories of an older store may be open.
        for entry in fs::read_dir(&top).map_err(io_err(&top))? {
            let path = entry.map_err(io_err(&top))?.path();
            if path.is_dir() {
                private_dir(&path)?;
            }
        }
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        private_dir(&tmp)?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same store, writing with `mode`.
    pub fn with_write_mode(mut self, mode: WriteMode) -> Store {
        self.mode = mode;
        self
    }

    /// How this store writes contents.
    pub fn write_mode(&self) -> WriteMode {
        self.mode
    }

    /// The same store, making contents durable as `durability` says.
    pub fn with_durability(mut self, durability: Durability) -> Store {
        self.durability = durability;
        self
    }

    /// When this store's contents reach the disk.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// A writer for a new content of about `size_hint` bytes, into a
    /// temporary file of the store; hand it to [`Store::commit`] once its
    /// bytes are verified. Dropping it removes the temporary file.
    /// Contents that fit one buffer ([`PLAIN_BELOW`]) are written with one
    /// plain `write(2)`: io_uring overlaps writes with decompression only
    /// when there are several, and for one small write it costs a ring
    /// round trip and often a kernel worker's wake-up more.
    pub fn writer(&self, size_hint: u64) -> Result<ContentWriter, StoreError> {
        let ring =
            (self.mode == WriteMode::Auto && size_hint >= PLAIN_BELOW && uring_writer::available())
                .then(uring_writer::take_ring);
        self.writer_with(ring, size_hint)
    }

    /// [`Store::writer`] with the ring obtained (or refused) already;
    /// `None`: plain writes.
    fn writer_with(
        &self,
        ring: Option<io::Result<uring_writer::Ring>>,
        size_hint: u64,
    ) -> Result<ContentWriter, StoreError> {
        let file = self.temp()?;
        let path = file.path().to_path_buf();
        match ring {
            Some(Ok(ring)) => {
                return Ok(ContentWriter {
                    path,
                    inner: Inner::Uring(Box::new(UringWriter::new(ring, file, size_hint))),
                })
            }
            Some(Err(e)) if !RING_FAILURE_LOGGED.swap(true, Ordering::Relaxed) => {
                warn!(
                    "creating an io_uring failed ({e}): contents are written with plain write(2)"
                );
            }
            Some(Err(_)) | None => {}
        }
        // Small contents (most of an image) get a small buffer.
        let capacity = usize::try_from(size_hint.clamp(8 << 10, 256 << 10)).unwrap_or(256 << 10);
        Ok(ContentWriter {
            path,
            inner: Inner::Plain(BufWriter::with_capacity(capacity, Unnamed(file))),
        })
    }

    /// Finishes `writer` (every write completed) and moves its file, whose
    /// content the caller has verified to hash to `sha`, into the store
    /// ([`Store::insert_verified`]). On error nothing is visible and the
    /// temporary file is removed.
    pub fn commit(&self, writer: ContentWriter, sha: &[u8; 32]) -> Result<PathBuf, StoreError> {
        let file = writer.finish()?;
        self.insert_verified(file, sha)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the content with SHA-256 `sha` lives (whether or not present).
    pub fn path(&self, sha: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(sha);
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether the content with SHA-256 `sha` is present.
    pub fn has(&self, sha: &[u8; 32]) -> bool {
        self.path(sha).is_file()
    }

    /// Opens the content with SHA-256 `sha` for reading.
    pub fn open_content(&self, sha: &[u8; 32]) -> io::Result<File> {
        File::open(self.path(sha))
    }

    /// A new temporary file in the store's filesystem, to be filled and then
    /// handed to [`Store::insert_verified`].
    pub fn temp(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.tmp_dir();
        tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))
    }

    /// Moves `file`, whose content the caller has verified to hash to `sha`,
    /// into the store: mode 0400, its data synced if the store's durability
    /// is [`Durability::PerContent`], then an atomic rename (all of it
    /// durable after the next [`Store::sync`]). If the content is already present the temporary
    /// file is dropped instead. Returns the content's path.
    pub fn insert_verified(
        &self,
        file: tempfile::NamedTempFile,
        sha: &[u8; 32],
    ) -> Result<PathBuf, StoreError> {
        let dest = self.path(sha);
        if dest.is_file() {
            return Ok(dest);
        }
        let tmp_path = file.path().to_path_buf();
        // Through the open file: no second walk of the path.
        file.as_file()
            .set_permissions(Permissions::from_mode(CONTENT_MODE))
            .map_err(io_err(&tmp_path))?;
        if self.durability == Durability::PerContent {
            // The bytes (and the size that reads them) before the name.
            file.as_file().sync_data().map_err(io_err(&tmp_path))?;
        } else if self.durability == Durability::Batch {
            start_write_out(file.as_file());
        }
        // The fan-out directory is made on the first rename that lacks it.
        let file = match file.persist(&dest) {
            Ok(_) => return Ok(dest),
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => e.file,
            Err(e) => {
                return Err(StoreError::Io {
                    path: dest,
                    source: e.error,
                })
            }
        };
        private_dir(dest.parent().unwrap_or(&self.root))?;
        file.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Makes every content inserted so far durable: one `syncfs` of the
    /// filesystem holding the store.
    pub fn sync(&self) -> Result<(), StoreError> {
        let dir = File::open(&self.root).map_err(io_err(&self.root))?;
        // SAFETY: syncfs on a file descriptor we own, for the call's duration.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(io_err(&self.root)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Re-hashes the content `sha` if present; a content whose bytes do not
    /// match its name (torn by a crash) is deleted. Returns whether a
    /// matching content is present.
    pub fn verify(&self, sha: &[u8; 32]) -> Result<bool, StoreError> {
        let path = self.path(sha);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(io_err(&path))?;
        let actual: [u8; 32] = hasher.finalize().into();
        if &actual == sha {
            return Ok(true);
        }
        self.remove(sha)?;
        Ok(false)
    }

    /// The SHA-256 of every content in the store.
    pub fn list(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let top = self.root.join("sha256");
        let mut out = Vec::new();
        for dir in fs::read_dir(&top).map_err(io_err(&top))? {
            let dir = dir.map_err(io_err(&top))?.path();
            if !dir.is_dir() {
                continue;
            }
            for f in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let name = f.map_err(io_err(&dir))?.file_name();
                let mut sha = [0u8; 32];
                if hex::decode_to_slice(name.as_encoded_bytes(), &mut sha).is_ok() {
                    out.push(sha);
                }
            }
        }
        Ok(out)
    }

    /// Removes the content with SHA-256 `sha`; returns its size if it was there.
    pub fn remove(&self, sha: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let path = self.path(sha);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(Some(size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Inserts `data`, checking it against `sha` first (for contents that
    /// arrive whole, and for tests).
    pub fn insert_bytes(&self, data: &[u8], sha: &[u8; 32]) -> Result<PathBuf, StoreError> {
        let actual: [u8; 32] = Sha256::digest(data).into();
        if &actual != sha {
            return Err(StoreError::Digest {
                expected: hex::encode(sha),
                actual: hex::encode(actual),
            });
        }
        if self.has(sha) {
            return Ok(self.path(sha));
        }
        let mut writer = self.writer(data.len() as u64)?;
        let tmp_path = writer.path().to_path_buf();
        writer.write_all(data).map_err(io_err(&tmp_path))?;
        self.commit(writer, sha)
    }
}

/// A content being written into a temporary file of the store, through
/// io_uring or plain writes (see [`Store::writer`]).
#[derive(Debug)]
pub struct ContentWriter {
    path: PathBuf,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Uring(Box<UringWriter<NamedTempFile>>),
    Plain(BufWriter<Unnamed>),
}

/// Writes to a temporary file without tempfile's path decoration (the
/// store's error names the path once; the OS error stays raw).
#[derive(Debug)]
struct Unnamed(NamedTempFile);

impl Write for Unnamed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.as_file_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.as_file_mut().flush()
    }
}

impl ContentWriter {
    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this content is written through io_uring.
    pub fn uses_uring(&self) -> bool {
        matches!(self.inner, Inner::Uring(_))
    }

    /// Waits for every write and returns the temporary file.
    pub fn finish(self) -> Result<NamedTempFile, StoreError> {
        let path = self.path;
        let r = match self.inner {
            Inner::Uring(w) => w.finish(),
            Inner::Plain(w) => w.into_inner().map(|u| u.0).map_err(|e| e.into_error()),
        };
        r.map_err(|source| StoreError::Io { path, source })
    }
}

impl Write for ContentWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Uring(w) => w.write(buf),
            Inner::Plain(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            Inner::Uring(w) => w.write_all(buf),
            Inner::Plain(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Uring(w) => w.flush(),
            Inner::Plain(w) => w.flush(),
        }
    }
}

/// Test helpers shared by the store's and the receiver's tests.
#[cfg(test)]
pub(crate) mod test_support {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;
    use std::process::Command;

    /// A small tmpfs mounted for one test, unmounted on drop.
    pub(crate) struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        /// Mounts a tmpfs of `size` (e.g. `64k`); the tests that use it are
        /// ignored unless run as root, and fail without it.
        pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                panic!("mounting a tmpfs needs root (an ignored test: run as root with --include-ignored)");
            }
            let dir = tempfile::tempdir().unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "mount tmpfs: {status}");
            Some(Tmpfs { dir })
        }

        /// The mount point.
        pub(crate) fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(self.dir.path())
                    .status();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn the_store_is_closed_to_other_users_and_open_fixes_old_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        // As an older version left it: open directories.
        let fanout = root.join("sha256/ab");
        fs::create_dir_all(&fanout).unwrap();
        for d in [&root, &root.join("sha256"), &fanout] {
            fs::set_permissions(d, Permissions::from_mode(0o755)).unwrap();
        }
        let store = Store::open(&root).unwrap();
        let data = b"private inside the image";
        let path = store.insert_bytes(data, &sha(data)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&path), CONTENT_MODE);
        for d in [
            root.clone(),
            root.join("sha256"),
            root.join("tmp"),
            fanout,
            path.parent().unwrap().to_path_buf(),
        ] {
            assert_eq!(mode(&d), DIR_MODE, "{}", d.display());
        }
        // A symlink where a directory should be is refused.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(private_dir(&link).is_err());
    }

    #[test]
    fn insert_is_read_only_keyed_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let data = b"hello store".to_vec();
        let key = sha(&data);
        assert!(!store.has(&key));
        let path = store.insert_bytes(&data, &key).unwrap();
        let hex = hex::encode(key);
        assert_eq!(
            path,
            dir.path().join("store/sha256").join(&hex[..2]).join(&hex)
        );
        assert!(store.has(&key));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
        let mut back = Vec::new();
        store
            .open_content(&key)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // A second insert leaves the same inode in place and no temp behind.
        let ino = fs::metadata(&path).unwrap().ino();
        store.insert_bytes(&data, &key).unwrap();
        let mut tmp = store.temp().unwrap();
        tmp.write_all(&data).unwrap();
        store.insert_verified(tmp, &key).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(
            fs::read_dir(dir.path().join("store/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn verify_deletes_torn_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (good, torn) = (sha(b"good"), sha(b"torn"));
        store.insert_bytes(b"good", &good).unwrap();
        store.insert_bytes(b"torn", &torn).unwrap();
        store.sync().unwrap();
        // A crash left the second one short.
        let path = store.path(&torn);
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"to").unwrap();
        assert!(store.verify(&good).unwrap());
        assert!(!store.verify(&torn).unwrap());
        assert!(!store.has(&torn));
        assert!(!store.verify(&sha(b"absent")).unwrap());
    }

    #[test]
    fn list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (sha(b"a"), sha(b"bb"));
        store.insert_bytes(b"a", &a).unwrap();
        store.insert_bytes(b"bb", &b).unwrap();
        let mut listed = store.list().unwrap();
        listed.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(store.remove(&b).unwrap(), Some(2));
        assert_eq!(store.remove(&b).unwrap(), None);
        assert_eq!(store.list().unwrap(), vec![a]);
    }

    #[test]
    fn wrong_bytes_are_refused_and_never_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sha(b"expected");
        let err = store.insert_bytes(b"other", &key).unwrap_err();
        assert!(matches!(err, StoreError::Digest { .. }), "{err}");
        assert!(!store.has(&key));
    }

    fn visible_contents(store: &Store) -> usize {
        store.list().unwrap().len()
    }

    #[test]
    fn both_write_modes_store_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plain = store.clone().with_write_mode(WriteMode::Plain);
        assert_eq!(plain.write_mode(), WriteMode::Plain);
        for size in [0usize, 1, 4095, 4096, (1 << 20) + 17] {
            for (i, s) in [&store, &plain].into_iter().enumerate() {
                // Distinct contents per mode, so neither is a no-op.
                let data: Vec<u8> = (0..size).map(|j| (j % 253) as u8 ^ i as u8).collect();
                let key = sha(&data);
                let mut w = s.writer(size as u64).unwrap();
                if s.write_mode() == WriteMode::Plain || (size as u64) < PLAIN_BELOW {
                    assert!(!w.uses_uring());
                } else {
                    assert_eq!(w.uses_uring(), uring_writer::available());
                }
                for piece in data.chunks(7777) {
                    w.write_all(piece).unwrap();
                }
                let path = s.commit(w, &key).unwrap();
                assert!(fs::read(&path).unwrap() == data, "size {size} mode {i}");
                assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
            }
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn the_environment_can_ask_for_a_sync_per_content() {
        assert_eq!(Durability::from_env_value(None), Durability::Batch);
        assert_eq!(Durability::from_env_value(Some("batch")), Durability::Batch);
        assert_eq!(
            Durability::from_env_value(Some(" Content\n")),
            Durability::PerContent
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path())
            .unwrap()
            .with_durability(Durability::PerContent);
        assert_eq!(store.durability(), Durability::PerContent);
        let key = sha(b"synced");
        let path = store.insert_bytes(b"synced", &key).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"synced");
    }

    #[test]
    fn the_environment_can_force_plain_writes() {
        assert_eq!(WriteMode::from_env_value(None), WriteMode::Auto);
        assert_eq!(WriteMode::from_env_value(Some("uring")), WriteMode::Auto);
        assert_eq!(WriteMode::from_env_value(Some("plain")), WriteMode::Plain);
        assert_eq!(
            WriteMode::from_env_value(Some(" PLAIN\n")),
            WriteMode::Plain
        );
    }

    #[test]
    fn a_refused_io_uring_falls_back_to_plain_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 239) as u8).collect();
        let key = sha(&data);
        let path = std::thread::scope(|s| {
            s.spawn(|| {
                // This thread's io_uring_setup fails with EPERM, as under a
                // container runtime's seccomp profile.
                uring_writer::test_support::refuse_io_uring_setup_on_this_thread();
                let refused = uring_writer::new_ring();
                assert_eq!(
                    refused.as_ref().err().and_then(io::Error::raw_os_error),
                    Some(libc::EPERM)
                );
                let mut w = store.writer_with(Some(refused), data.len() as u64).unwrap();
                assert!(!w.uses_uring());
                w.write_all(&data).unwrap();
                store.commit(w, &key).unwrap()
            })
            .join()
            .unwrap()
        });
        assert!(fs::read(path).unwrap() == data);
        assert!(RING_FAILURE_LOGGED.load(Ordering::Relaxed));
    }

    #[test]
    fn a_dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer(1 << 20).unwrap();
        w.write_all(&vec![7u8; 1 << 20]).unwrap();
        let tmp = w.path().to_path_buf();
        assert!(tmp.exists());
        drop(w);
        assert!(!tmp.exists());
        assert_eq!(visible_contents(&store), 0);
    }

    #[test]
    #[ignore = "needs root: mounts a small tmpfs"]
    fn a_full_disk_fails_clearly_and_leaves_nothing_visible() {
        let Some(fs) = test_support::Tmpfs::mount("64k") else {
            return;
        };
        for mode in [WriteMode::Auto, WriteMode::Plain] {
            let store = Store::open(fs.path().join("store"))
                .unwrap()
                .with_write_mode(mode);
            let data = vec![0x42u8; 1 << 20];
            let key = sha(&data);
            let err = store.insert_bytes(&data, &key).unwrap_err();
            let StoreError::Io { path, source } = &err else {
                panic!("{mode:?}: {err}");
            };
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{mode:?}: {err}");
            assert_eq!(source.kind(), io::ErrorKind::StorageFull);
            assert!(path.starts_with(fs.path().join("store/tmp")), "{err}");
            assert!(err.to_string().contains("No space left on device"), "{err}");
            assert!(!store.has(&key));
            assert_eq!(visible_contents(&store), 0);
            assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
            // The space is back: a small content still goes in.
            let small = sha(b"fits");
            store.insert_bytes(b"fits", &small).unwrap();
            assert!(store.verify(&small).unwrap());
            fs::remove_dir_all(store.root()).unwrap();
        }
    }

    /// Not a pass/fail test: prints how long storing 200 MiB takes through
    /// io_uring and through plain writes, as 50 contents of 4 MiB and as
    /// 6400 contents of 32 KiB (ext4 under the test's temporary directory,
    /// page cache only: no sync). Run with
    /// `cargo test -p starlight-worker --lib store::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement: prints timings, asserts nothing"]
    fn measure_uring_vs_plain_200_mib() {
        let shapes = [(50usize, 4usize << 20), (6400, 32 << 10)];
        for (count, size) in shapes {
            for mode in [
                WriteMode::Auto,
                WriteMode::Plain,
                WriteMode::Auto,
                WriteMode::Plain,
            ] {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(dir.path()).unwrap().with_write_mode(mode);
                let contents: Vec<(Vec<u8>, [u8; 32])> = (0..count)
                    .map(|i| {
                        let mut d = vec![(i % 251) as u8; size];
                        d[..8].copy_from_slice(&(i as u64).to_le_bytes());
                        let k = sha(&d);
                        (d, k)
                    })
                    .collect();
                let t = std::time::Instant::now();
                for (data, key) in &contents {
                    let mut w = store.writer(size as u64).unwrap();
                    // As the decompressor would: 64 KiB at a time.
                    for piece in data.chunks(64 << 10) {
                        w.write_all(piece).unwrap();
                    }
                    store.commit(w, key).unwrap();
                }
                let secs = t.elapsed().as_secs_f64();
                let mib = (count * size) as f64 / f64::from(1 << 20);
                println!(
                    "{mode:?}: {count} x {} KiB: {:.0} ms, {:.0} MiB/s",
                    size >> 10,
                    secs * 1000.0,
                    mib / secs
                );
            }
        }
    }

    /// Not a pass/fail test: what durability costs. Stores 1,000 contents
    /// of 4 KiB and 10 of 16 MiB with [`Durability::PerContent`] and with
    /// [`Durability::Batch`], each run ended by one [`Store::sync`] (so both
    /// are durable at the end), in a directory of `STARLIGHT_MEASURE_DIR`
    /// (default: the system's temporary directory). Run with
    /// `cargo test -p starlight-worker --lib store::tests::measure_durability -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement: prints timings, asserts nothing"]
    fn measure_durability() {
        let base = std::env::var_os("STARLIGHT_MEASURE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let shapes = [(1000usize, 4usize << 10), (10, 16 << 20)];
        for (count, size) in shapes {
            for durability in [
                Durability::Batch,
                Durability::PerContent,
                Durability::Batch,
                Durability::PerContent,
            ] {
                let dir = tempfile::tempdir_in(&base).unwrap();
                let store = Store::open(dir.path()).unwrap().with_durability(durability);
                let contents: Vec<(Vec<u8>, [u8; 32])> = (0..count)
                    .map(|i| {
                        let mut d = vec![(i % 251) as u8; size];
                        d[..8].copy_from_slice(&(i as u64).to_le_bytes());
                        let k = sha(&d);
                        (d, k)
                    })
                    .collect();
                store.sync().unwrap();
                let t = std::time::Instant::now();
                for (data, key) in &contents {
                    let mut w = store.writer(size as u64).unwrap();
                    for piece in data.chunks(64 << 10) {
                        w.write_all(piece).unwrap();
                    }
                    store.commit(w, key).unwrap();
                }
                let stored = t.elapsed();
                store.sync().unwrap();
                let total = t.elapsed();
                println!(
                    "{durability:?}: {count} x {} KiB: stored {:.0} ms, durable {:.0} ms ({:.2} ms per content)",
                    size >> 10,
                    stored.as_secs_f64() * 1000.0,
                    total.as_secs_f64() * 1000.0,
                    total.as_secs_f64() * 1000.0 / count as f64,
                );
            }
        }
    }

    #[test]
    fn reopening_clears_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, leftover) = store.temp().unwrap().keep().unwrap();
        assert!(leftover.exists());
        let key = sha(b"kept");
        store.insert_bytes(b"kept", &key).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        assert!(store.has(&key));
    }
}
