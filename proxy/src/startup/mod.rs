//! Static start-up order: what an image's entrypoint must load before it
//! can run, found from the image alone (no trace, nothing ever executed).
//!
//! For an image nothing has run yet, the proxy orders the bundle so that
//! these files come first:
//! 1. the executable named by the configuration (`Entrypoint` + `Cmd`,
//!    searched in the config's `PATH`, relative to `WorkingDir`), following
//!    symbolic links through the merged table of contents;
//! 2. for an ELF executable, its interpreter (`PT_INTERP`) and its
//!    `DT_NEEDED` libraries, searched as the dynamic loader searches them
//!    (`DT_RPATH` when there is no `DT_RUNPATH`, `LD_LIBRARY_PATH` from the
//!    config, `DT_RUNPATH`, the directories of `ld.so.conf` and its
//!    includes, then the standard directories), recursively;
//! 3. for a script, the interpreter of its `#!` line (through `env`),
//!    recursively;
//! 4. for a shell script (the entrypoint, a `#!` script, `sh -c`), the
//!    programs its commands run, found through the config's `PATH`, and
//!    the files they name, recursively (see `shell.rs`);
//! 5. for a Python interpreter (run directly, through `#!`, as
//!    `python -m mod` or `python script.py`), the modules every start
//!    imports, `.pth` files of the site directories, then the script and
//!    every module its `import` statements reach, resolved as the path
//!    finder resolves them, in the order Python loads them; extension
//!    modules bring their libraries (see `python.rs`);
//! 6. the small files nearly every start reads (`ld.so.cache`, `passwd`,
//!    `group`, `nsswitch.conf`, `hosts`, `localtime`, ...).
//!
//! The analysis reads file contents through a [`ContentReader`] (the proxy
//! reads them from the registry by range) and is bounded: at most
//! [`StartupLimits::max_files`] files read and
//! [`StartupLimits::max_bytes`] bytes in all.

mod cmdline;
mod elf;
mod entrypoint;
pub mod inherit;
mod node;
mod pyenv;
mod pysource;
mod python;
mod search;
mod shell;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod tree;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;

use crate::db::TocEntry;
use crate::format::EntryKind;

pub use entrypoint::{command_of, Command};
pub use tree::Tree;

/// A boxed future, for [`ContentReader`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Reads the uncompressed content of a regular file of the image.
pub trait ContentReader: Sync {
    /// Up to `limit` bytes from the start of `entry`'s content (all of it
    /// when it is shorter).
    fn read<'a>(
        &'a self,
        entry: &'a TocEntry,
        limit: u64,
    ) -> BoxFuture<'a, Result<Vec<u8>, StartupError>>;
}

/// Why the start-up order could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The image configuration is not valid JSON of the expected shape.
    #[error("the image configuration: {0}")]
    Config(String),
    /// A content could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Bounds on the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupLimits {
    /// Most files whose content is read.
    pub max_files: usize,
    /// Most content bytes read in all.
    pub max_bytes: u64,
    /// Largest ELF file parsed (a larger one is still ordered first, but
    /// its libraries are not followed).
    pub max_elf: u64,
    /// Largest script or Python source parsed (a larger one is still
    /// ordered, but what it runs or imports is not followed).
    pub max_source: u64,
    /// Most Python modules resolved per interpreter start.
    pub max_modules: usize,
    /// Deepest chain of imports (or of scripts running scripts) followed.
    pub max_depth: usize,
    /// Most scripts (shell or Python starts) analysed.
    pub max_scripts: usize,
}

impl Default for StartupLimits {
    fn default() -> Self {
        StartupLimits {
            max_files: 4096,
            max_bytes: 1 << 30,
            max_elf: 256 << 20,
            max_source: 2 << 20,
            max_modules: 3000,
            max_depth: 64,
            max_scripts: 64,
        }
    }
}

/// The files nearly every start of a Linux program reads (resolved through
/// the tree; absent ones are skipped).
pub const COMMON_FILES: &[&str] = &[
    "etc/ld.so.cache",
    "etc/nsswitch.conf",
    "etc/passwd",
    "etc/group",
    "etc/hosts",
    "etc/host.conf",
    "etc/resolv.conf",
    "etc/gai.conf",
    "etc/localtime",
    "etc/ld.so.preload",
    "etc/os-release",
    "etc/ssl/openssl.cnf",
    "usr/lib/locale/locale-archive",
];

/// Bytes read to recognize a file (ELF magic or a `#!` line).
const SNIFF: u64 = 512;

/// The result of [`analyze`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupOrder {
    /// Paths (as in the merged table of contents) of the regular files the
    /// start needs, first needed first.
    pub paths: Vec<String>,
    /// The executable the analysis started from, if it was found.
    pub executable: Option<String>,
    /// Names the analysis could not find (missing libraries, interpreters).
    pub unresolved: Vec<String>,
    /// Contents read, and their bytes.
    pub files_read: usize,
    /// Bytes read.
    pub bytes_read: u64,
}

/// One thing still to look at.
enum Work {
    /// A program to run: resolve, then follow its interpreter/libraries.
    Program(String),
    /// A file already ordered whose libraries are still to follow.
    Follow(String),
    /// A library of the object at the given path (for `$ORIGIN`), with the
    /// rpath list inherited from the loading chain.
    Library {
        name: String,
        origin: String,
        rpath: Vec<String>,
        runpath: Vec<String>,
    },
}

struct Analysis<'a> {
    tree: &'a Tree<'a>,
    reader: &'a dyn ContentReader,
    limits: StartupLimits,
    command: Command,
    system_dirs: Vec<String>,
    order: StartupOrder,
    seen: HashSet<String>,
    queue: VecDeque<Work>,
    /// Scripts to analyse once the loads queued before them are followed.
    scripts: VecDeque<cmdline::Script>,
    scripts_done: usize,
    /// How many scripts ran the one being analysed (0: the command).
    depth: usize,
}

/// Computes the start-up order of the image with configuration
/// `config_json` and merged table of contents `toc`.
pub async fn analyze(
    config_json: &[u8],
    toc: &[TocEntry],
    reader: &dyn ContentReader,
    limits: StartupLimits,
) -> Result<StartupOrder, StartupError> {
    let command = command_of(config_json)?;
    let tree = Tree::new(toc);
    let mut a = Analysis {
        tree: &tree,
        reader,
        limits,
        command: command.clone(),
        system_dirs: Vec::new(),
        order: StartupOrder::default(),
        seen: HashSet::new(),
        queue: VecDeque::new(),
        scripts: VecDeque::new(),
        scripts_done: 0,
        depth: 0,
    };
    a.system_dirs = search::system_dirs(&tree, reader, &mut a.order, limits).await;
    a.order.executable = command.executable(&tree);
    // The executable and everything it loads come first, then the programs
    // and files the command line names (a shell's `-c` program, a script,
    // the modules a Python program imports).
    a.command_line(&command.argv, 0);
    a.run().await;
    for common in COMMON_FILES {
        if let Some((path, entry)) = tree.resolve(common) {
            if entry.entry.kind == EntryKind::File || entry.entry.kind == EntryKind::Hardlink {
                a.push_path(path);
            }
        }
    }
    Ok(a.order)
}

impl Analysis<'_> {
    fn push_path(&mut self, path: String) -> bool {
        if self.seen.insert(path.clone()) {
            self.order.paths.push(path);
            true
        } else {
            false
        }
    }

    fn budget_left(&self) -> bool {
        self.order.files_read < self.limits.max_files
            && self.order.bytes_read < self.limits.max_bytes
    }

    async fn read(&mut self, path: &str, entry: &TocEntry, limit: u64) -> Option<Vec<u8>> {
        if !self.budget_left() {
            return None;
        }
        let limit = limit.min(self.limits.max_bytes - self.order.bytes_read);
        match self.reader.read(entry, limit).await {
            Ok(bytes) => {
                self.order.files_read += 1;
                self.order.bytes_read += bytes.len() as u64;
                Some(bytes)
            }
            Err(e) => {
                tracing::warn!(path, "start-up analysis: {e}");
                None
            }
        }
    }

    /// Follows every queued load, then analyses the scripts found, until
    /// nothing is left.
    async fn run(&mut self) {
        loop {
            self.run_loads().await;
            let Some(script) = self.scripts.pop_front() else {
                return;
            };
            if !matches!(script, cmdline::Script::Files(_)) {
                if self.scripts_done >= self.limits.max_scripts {
                    continue;
                }
                self.scripts_done += 1;
            }
            self.script(script).await;
        }
    }

    /// Follows every queued program and library (scripts they turn out to
    /// be are queued in [`Analysis::scripts`]).
    async fn run_loads(&mut self) {
        while let Some(work) = self.queue.pop_front() {
            match work {
                Work::Program(path) => self.program(&path, Vec::new()).await,
                Work::Follow(path) => {
                    if let Some((real, entry)) = self.tree.resolve(&path) {
                        self.follow(&real, entry, Vec::new()).await;
                    }
                }
                Work::Library {
                    name,
                    origin,
                    rpath,
                    runpath,
                } => {
                    let found = search::find_library(
                        self.tree,
                        &name,
                        &origin,
                        &rpath,
                        &self.command.library_path,
                        &runpath,
                        &self.system_dirs,
                    );
                    match found {
                        Some(path) => self.program(&path, rpath).await,
                        None => self.order.unresolved.push(name),
                    }
                }
            }
        }
    }

    /// Orders the file at `path` (resolved) and queues what loading it needs.
    async fn program(&mut self, path: &str, inherited_rpath: Vec<String>) {
        let Some((real, entry)) = self.tree.resolve(path) else {
            self.order.unresolved.push(path.to_string());
            return;
        };
        if !matches!(entry.entry.kind, EntryKind::File | EntryKind::Hardlink) {
            return;
        }
        if !self.push_path(real.clone()) {
            return;
        }
        self.follow(&real, entry, inherited_rpath).await;
    }

    /// Queues what loading the ordered file `real` needs: a script's
    /// interpreter (and the script's analysis), an ELF object's loader and
    /// libraries.
    async fn follow(&mut self, real: &str, entry: &TocEntry, inherited_rpath: Vec<String>) {
        if entry.entry.size == 0 {
            return;
        }
        let Some(head) = self.read(real, entry, SNIFF).await else {
            return;
        };
        if let Some(interp) = elf::shebang(&head) {
            self.shebang(real, interp);
            return;
        }
        if !elf::is_elf(&head) {
            return;
        }
        if entry.entry.size > self.limits.max_elf {
            return;
        }
        let bytes = if entry.entry.size as usize <= head.len() {
            head
        } else {
            match self.read(real, entry, entry.entry.size).await {
                Some(b) => b,
                None => return,
            }
        };
        let Some(info) = elf::ElfInfo::parse(&bytes) else {
            return;
        };
        if let Some(interp) = &info.interpreter {
            if let Some(p) = interp.strip_prefix('/') {
                self.queue.push_back(Work::Program(p.to_string()));
            }
        }
        // DT_RPATH of the loading chain applies unless the object has DT_RUNPATH.
        let mut rpath = inherited_rpath;
        if info.runpath.is_empty() {
            rpath.extend(info.rpath.iter().cloned());
        }
        let origin = real
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| d.to_string());
        for name in info.needed {
            self.queue.push_back(Work::Library {
                name,
                origin: origin.clone(),
                rpath: if info.runpath.is_empty() {
                    rpath.clone()
                } else {
                    Vec::new()
                },
                runpath: info.runpath.clone(),
            });
        }
    }
}
