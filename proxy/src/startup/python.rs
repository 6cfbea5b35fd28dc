//! A Python interpreter's start: the modules it imports before the
//! program runs, `.pth` files of its site directories, then everything
//! the program's `import` statements reach.
//!
//! Two passes. Discovery resolves module names level by level (sources of
//! one level read concurrently, bounded by the analysis budgets and
//! [`super::StartupLimits::max_modules`]/`max_depth`) and parses each
//! source's imports. Ordering then walks the import graph depth first from
//! the start-up modules and the main program, as Python's import runs:
//! a module's file, then, statement by statement, what it imports.
//! Extension modules bring their libraries right after them.

use std::collections::{HashMap, HashSet};

use futures_util::stream::{self, StreamExt};

use super::cmdline::PyMain;
use super::pyenv::{self, Module, PyEnv};
use super::pysource;
use super::{Analysis, Work};
use crate::format::EntryKind;

/// Sources read at once during discovery.
const CONCURRENT_READS: usize = 16;

/// Largest `.pth` file read.
const MAX_PTH: u64 = 64 << 10;

/// The module name of the main program.
const MAIN: &str = "__main__";

/// One module of the import graph.
#[derive(Debug, Default)]
struct Node {
    /// The file loaded (none: not found, or a namespace package).
    load: Option<String>,
    extension: bool,
    /// Modules imported, in statement order (parents before children).
    imports: Vec<String>,
}

/// `a.b.c` and its parents, parents first.
fn with_parents(name: &str) -> impl Iterator<Item = String> + '_ {
    name.match_indices('.')
        .map(|(i, _)| name[..i].to_string())
        .chain(std::iter::once(name.to_string()))
}

/// The modules `source` (module `current`) imports, absolute, parents
/// first; `from x import y` also names `x.y` (kept only if it resolves).
fn imports_of(source: &[u8], current: &str, package: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(source);
    let mut out = Vec::new();
    for import in pysource::imports(&text) {
        let Some(module) = pysource::absolute(&import, current, package) else {
            continue;
        };
        if module.is_empty() {
            continue;
        }
        out.extend(with_parents(&module));
        for name in import.names.iter().filter(|n| *n != "*") {
            out.push(format!("{module}.{name}"));
        }
    }
    out
}

struct Resolver<'e> {
    env: &'e PyEnv,
    main_dir: Vec<String>,
    found: HashMap<String, Option<Module>>,
}

impl Resolver<'_> {
    /// Resolves dotted `name` (its parents first, cached).
    fn find(&mut self, tree: &super::Tree<'_>, name: &str) -> Option<Module> {
        if let Some(m) = self.found.get(name) {
            return m.clone();
        }
        let m = match name.rsplit_once('.') {
            None => {
                let dirs: Vec<String> = self
                    .main_dir
                    .iter()
                    .chain(&self.env.path)
                    .cloned()
                    .collect();
                pyenv::find(tree, self.env, &dirs, name)
            }
            Some((parent, last)) => {
                let parent = self.find(tree, parent)?;
                if parent.package {
                    pyenv::find(tree, self.env, &parent.search, last)
                } else {
                    None
                }
            }
        };
        self.found.insert(name.to_string(), m.clone());
        m
    }
}

impl Analysis<'_> {
    /// Orders what interpreter `interpreter` (as named) loads to run `main`.
    pub(super) async fn python(&mut self, interpreter: &str, main: PyMain) {
        let Some((real, _)) = self.tree.resolve(interpreter) else {
            return;
        };
        let env = PyEnv::detect(
            self.tree,
            interpreter,
            &real,
            &self.command.python_path.clone(),
        );
        for f in pyenv::STARTUP_FILES {
            if let Some(p) = super::entrypoint::is_file(self.tree, f) {
                self.push_path(p);
            }
        }
        let mut roots: Vec<String> = env
            .startup_modules()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut env = env;
        let mut graph: HashMap<String, Node> = HashMap::new();
        for (path, imports) in self.site_files(&mut env).await {
            let name = format!("<pth {path}>");
            graph.insert(
                name.clone(),
                Node {
                    load: Some(path),
                    extension: false,
                    imports,
                },
            );
            roots.push(name);
        }
        roots.extend(pyenv::SITE_HOOKS.iter().map(|m| m.to_string()));
        let main_dir = match &main {
            PyMain::Script(path) => {
                let path = path.trim_start_matches('/');
                let (source, load) = match self.tree.resolve(path) {
                    Some((dir, e)) if e.entry.kind == EntryKind::Dir => {
                        (format!("{dir}/__main__.py"), dir)
                    }
                    _ => (
                        path.to_string(),
                        path.rsplit_once('/')
                            .map_or(String::new(), |(d, _)| d.to_string()),
                    ),
                };
                let mut node = Node::default();
                if let Some((real, bytes)) = self.read_source(&source).await {
                    node.imports = imports_of(&bytes, MAIN, false);
                    node.load = Some(real);
                }
                graph.insert(MAIN.to_string(), node);
                roots.push(MAIN.to_string());
                load
            }
            PyMain::Module(m) => {
                roots.push("runpy".to_string());
                roots.extend(with_parents(m));
                roots.push(format!("{m}.__main__"));
                self.command.working_dir.trim_matches('/').to_string()
            }
            PyMain::Code(code) => {
                let node = Node {
                    imports: imports_of(code.as_bytes(), MAIN, false),
                    ..Node::default()
                };
                graph.insert(MAIN.to_string(), node);
                roots.push(MAIN.to_string());
                self.command.working_dir.trim_matches('/').to_string()
            }
            PyMain::Nothing => self.command.working_dir.trim_matches('/').to_string(),
        };
        let mut resolver = Resolver {
            env: &env,
            main_dir: vec![main_dir],
            found: HashMap::new(),
        };
        self.discover(&mut resolver, &mut graph, &roots).await;
        self.order_graph(&graph, &roots).await;
    }

    /// The `.pth` files of the site directories, in the order `site`
    /// reads them, with the modules they import (their directories are
    /// added to the path).
    async fn site_files(&mut self, env: &mut PyEnv) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for site in env.site.clone() {
            let mut pth: Vec<&str> = self
                .tree
                .children(&site)
                .into_iter()
                .filter(|p| p.ends_with(".pth"))
                .collect();
            pth.sort_unstable();
            for p in pth {
                let Some((real, entry)) = self.tree.resolve(p) else {
                    continue;
                };
                if !matches!(entry.entry.kind, EntryKind::File | EntryKind::Hardlink) {
                    continue;
                }
                let Some(bytes) = self.read(&real, entry, MAX_PTH).await else {
                    continue;
                };
                let (imports, dirs) = pyenv::pth_lines(&String::from_utf8_lossy(&bytes), &site);
                let imports = imports
                    .iter()
                    .flat_map(|m| with_parents(m).collect::<Vec<_>>())
                    .collect();
                out.push((real, imports));
                for d in dirs {
                    if let Some((d, e)) = self.tree.resolve(&d) {
                        if e.entry.kind == EntryKind::Dir && !env.path.contains(&d) {
                            env.path.push(d);
                        }
                    }
                }
            }
        }
        out
    }

    /// Resolves the modules reachable from `roots`, level by level, and
    /// parses their sources.
    async fn discover(
        &mut self,
        resolver: &mut Resolver<'_>,
        graph: &mut HashMap<String, Node>,
        roots: &[String],
    ) {
        let mut frontier: Vec<String> = roots.to_vec();
        for main in graph.values() {
            frontier.extend(main.imports.iter().cloned());
        }
        let mut level = 0usize;
        while !frontier.is_empty() && level < self.limits.max_depth {
            level += 1;
            let mut to_read: Vec<(String, Module, String, u64)> = Vec::new();
            for name in std::mem::take(&mut frontier) {
                if graph.contains_key(&name) || graph.len() >= self.limits.max_modules {
                    continue;
                }
                let Some(m) = resolver.find(self.tree, &name) else {
                    graph.insert(name, Node::default());
                    continue;
                };
                graph.insert(
                    name.clone(),
                    Node {
                        load: m.load.clone(),
                        extension: m.extension,
                        imports: Vec::new(),
                    },
                );
                if let Some(src) = &m.source {
                    if let Some((real, e)) = self.tree.resolve(src) {
                        if e.entry.size <= self.limits.max_source && e.entry.size > 0 {
                            to_read.push((name, m.clone(), real, e.entry.size));
                        }
                    }
                }
            }
            let allowed = self.limits.max_files.saturating_sub(self.order.files_read);
            to_read.truncate(allowed);
            let reader = self.reader;
            let tree = self.tree;
            let reads: Vec<_> =
                stream::iter(to_read.into_iter().map(|(name, m, real, size)| async move {
                    let bytes = match tree.get(&real) {
                        Some(entry) => reader.read(entry, size).await.ok(),
                        None => None,
                    };
                    (name, m, bytes)
                }))
                .buffered(CONCURRENT_READS)
                .collect()
                .await;
            for (name, m, bytes) in reads {
                let Some(bytes) = bytes else { continue };
                self.order.files_read += 1;
                self.order.bytes_read += bytes.len() as u64;
                let imports = imports_of(&bytes, &name, m.package);
                frontier.extend(imports.iter().filter(|i| !graph.contains_key(*i)).cloned());
                if let Some(node) = graph.get_mut(&name) {
                    node.imports = imports;
                }
            }
            if self.order.bytes_read >= self.limits.max_bytes {
                break;
            }
        }
    }

    /// Orders the graph's files depth first from `roots`, as the imports run.
    async fn order_graph(&mut self, graph: &HashMap<String, Node>, roots: &[String]) {
        let mut visited: HashSet<&str> = HashSet::new();
        for root in roots {
            if !visited.insert(root.as_str()) {
                continue;
            }
            self.load_module(graph.get(root)).await;
            let mut stack: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
            while let Some((name, i)) = stack.last_mut() {
                let next = graph.get(*name).and_then(|n| n.imports.get(*i));
                *i += 1;
                match next {
                    Some(child) => {
                        if visited.insert(child.as_str()) {
                            self.load_module(graph.get(child)).await;
                            stack.push((child.as_str(), 0));
                        }
                    }
                    None => {
                        stack.pop();
                    }
                }
            }
        }
    }

    /// Orders a module's file; an extension module's libraries follow it.
    async fn load_module(&mut self, node: Option<&Node>) {
        let Some(Node {
            load: Some(path),
            extension,
            ..
        }) = node
        else {
            return;
        };
        if self.push_path(path.clone()) && *extension {
            self.queue.push_back(Work::Follow(path.clone()));
            self.run_loads().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_name_parents_and_from_names() {
        let src = b"import a.b\nfrom . import c\nfrom .d import e, *\n";
        assert_eq!(
            imports_of(src, "pkg.mod", false),
            vec!["a", "a.b", "pkg", "pkg.c", "pkg", "pkg.d", "pkg.d.e"]
        );
    }
}
