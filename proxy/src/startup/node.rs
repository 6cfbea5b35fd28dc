//! A Node.js program's start: the entry script and every module its
//! `require('x')` calls and `import ... from 'x'` statements reach,
//! resolved as Node resolves them (relative files with their extensions,
//! directories through `package.json` `"main"` or `index.js`, bare names
//! through the `node_modules` directories of every parent), in the order
//! they load: a module, then what it requires, in source order.

use std::collections::HashSet;

use serde::Deserialize;

use super::entrypoint::is_file;
use super::tree::Tree;
use super::Analysis;
use crate::format::EntryKind;

/// Largest `package.json` read.
const MAX_PACKAGE_JSON: u64 = 256 << 10;

/// Extensions tried after a name as written.
const EXTENSIONS: &[&str] = &["", ".js", ".json", ".node", ".cjs", ".mjs"];

/// Whether file name `name` is the Node.js interpreter.
pub fn is_node(name: &str) -> bool {
    name == "node" || name == "nodejs"
}

/// The module specifiers `source` loads: string arguments of `require(`
/// and the sources of `import`/`export ... from` statements, in order.
/// Comments are skipped; a malformed source yields fewer specifiers.
pub fn specifiers(source: &str) -> Vec<String> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if b[i..].starts_with(b"require(") && !ident_before(b, i) => {
                i += "require(".len();
                if let Some((s, end)) = string_at(b, skip_space(b, i)) {
                    out.push(s);
                    i = end;
                }
            }
            b'f' if b[i..].starts_with(b"from") && !ident_before(b, i) => {
                i += "from".len();
                if let Some((s, end)) = string_at(b, skip_space(b, i)) {
                    out.push(s);
                    i = end;
                }
            }
            b'i' if b[i..].starts_with(b"import") && !ident_before(b, i) => {
                i += "import".len();
                let j = skip_space(b, i);
                // `import 'x'` and `import('x')`.
                let j = if b.get(j) == Some(&b'(') {
                    skip_space(b, j + 1)
                } else {
                    j
                };
                if let Some((s, end)) = string_at(b, j) {
                    out.push(s);
                    i = end;
                }
            }
            b'\'' | b'"' | b'`' => {
                i = string_at(b, i).map_or(b.len(), |(_, end)| end);
            }
            _ => i += 1,
        }
    }
    out
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0
        && (b[i - 1].is_ascii_alphanumeric()
            || b[i - 1] == b'_'
            || b[i - 1] == b'$'
            || b[i - 1] == b'.')
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The string literal starting at `i` (its content, and the index after it).
fn string_at(b: &[u8], i: usize) -> Option<(String, usize)> {
    let quote = *b.get(i)?;
    if !matches!(quote, b'\'' | b'"' | b'`') {
        return None;
    }
    let mut j = i + 1;
    let mut s = Vec::new();
    while j < b.len() && b[j] != quote {
        if b[j] == b'\\' {
            j += 1;
        }
        if let Some(&c) = b.get(j) {
            s.push(c);
        }
        j += 1;
        if quote != b'`' && b.get(j) == Some(&b'\n') {
            return None;
        }
    }
    Some((String::from_utf8_lossy(&s).into_owned(), j + 1))
}

#[derive(Deserialize)]
struct PackageJson {
    main: Option<String>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Joins `rel` to directory `dir` (both relative to the root), `.` and
/// `..` applied lexically.
fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    if rel.starts_with('/') {
        parts.clear();
    }
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn as_file(tree: &Tree<'_>, path: &str) -> Option<String> {
    EXTENSIONS
        .iter()
        .find_map(|ext| is_file(tree, &format!("{path}{ext}")))
}

fn is_dir(tree: &Tree<'_>, path: &str) -> bool {
    tree.resolve(path)
        .is_some_and(|(_, e)| e.entry.kind == EntryKind::Dir)
}

impl Analysis<'_> {
    /// A directory module: its `package.json` `"main"`, else `index.*`.
    async fn as_directory(&mut self, dir: &str) -> Option<String> {
        let manifest = format!("{dir}/package.json");
        if let Some((real, entry)) = self.tree.resolve(&manifest) {
            if matches!(entry.entry.kind, EntryKind::File | EntryKind::Hardlink) {
                self.push_path(real.clone());
                let main = self
                    .read(&real, entry, MAX_PACKAGE_JSON)
                    .await
                    .and_then(|b| serde_json::from_slice::<PackageJson>(&b).ok())
                    .and_then(|p| p.main);
                if let Some(main) = main {
                    let target = join(dir, &main);
                    if let Some(f) = as_file(self.tree, &target) {
                        return Some(f);
                    }
                    if let Some(f) = as_file(self.tree, &format!("{target}/index")) {
                        return Some(f);
                    }
                }
            }
        }
        as_file(self.tree, &format!("{dir}/index"))
    }

    /// Resolves `spec` required from the file in directory `from`.
    async fn resolve_node(&mut self, spec: &str, from: &str) -> Option<String> {
        let spec = spec.strip_prefix("node:").unwrap_or(spec);
        if spec.starts_with("./")
            || spec.starts_with("../")
            || spec.starts_with('/')
            || spec == "."
            || spec == ".."
        {
            let target = join(from, spec);
            if let Some(f) = as_file(self.tree, &target) {
                return Some(f);
            }
            return self.as_directory(&target).await;
        }
        let mut dir = from.to_string();
        loop {
            if !dir.ends_with("node_modules") {
                let base = if dir.is_empty() {
                    "node_modules".to_string()
                } else {
                    format!("{dir}/node_modules")
                };
                let target = format!("{base}/{spec}");
                if is_dir(self.tree, &base) {
                    if let Some(f) = as_file(self.tree, &target) {
                        return Some(f);
                    }
                    if is_dir(self.tree, &target) {
                        if let Some(f) = self.as_directory(&target).await {
                            return Some(f);
                        }
                    }
                }
            }
            if dir.is_empty() {
                return None;
            }
            dir = parent(&dir).to_string();
        }
    }

    /// Orders the `package.json` of the package `file` belongs to (the
    /// nearest one up the tree), which Node reads for the module's type.
    fn package_scope(&mut self, file: &str) {
        let mut dir = parent(file);
        loop {
            if !dir.ends_with("node_modules") {
                let manifest = if dir.is_empty() {
                    "package.json".to_string()
                } else {
                    format!("{dir}/package.json")
                };
                if let Some(p) = is_file(self.tree, &manifest) {
                    self.push_path(p);
                    return;
                }
            }
            if dir.is_empty() {
                return;
            }
            dir = parent(dir);
        }
    }

    /// Orders what `node main` loads, depth first in require order.
    pub(super) async fn node(&mut self, main: &str) {
        let Some(main) = as_file(self.tree, main.trim_start_matches('/')) else {
            return;
        };
        let mut stack = vec![(main, 0usize)];
        let mut visited: HashSet<String> = HashSet::new();
        while let Some((file, depth)) = stack.pop() {
            if visited.len() >= self.limits.max_modules || !visited.insert(file.clone()) {
                continue;
            }
            self.push_path(file.clone());
            self.package_scope(&file);
            if depth >= self.limits.max_depth
                || !(file.ends_with(".js") || file.ends_with(".cjs") || file.ends_with(".mjs"))
            {
                continue;
            }
            let Some((_, bytes)) = self.read_source(&file).await else {
                continue;
            };
            let from = parent(&file).to_string();
            let mut children = Vec::new();
            for spec in specifiers(&String::from_utf8_lossy(&bytes)) {
                if let Some(f) = self.resolve_node(&spec, &from).await {
                    if !visited.contains(&f) {
                        children.push((f, depth + 1));
                    }
                }
            }
            stack.extend(children.into_iter().rev());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_and_imports_are_found_comments_skipped() {
        let src = "// require('no')\n/* import x from 'no2' */\nconst a = require('express');\nconst b = require( \"./lib/b\" );\nimport c from './c.mjs';\nimport './side';\nexport { d } from '../d';\nconst e = await import('e');\nfoo.require('not');\nconst s = \"require('inside string')\";\n";
        assert_eq!(
            specifiers(src),
            vec!["express", "./lib/b", "./c.mjs", "./side", "../d", "e"]
        );
        for hostile in [
            "require(",
            "require('",
            "import",
            "/*",
            "'",
            "from `",
            "require(`x",
        ] {
            let _ = specifiers(hostile);
        }
        assert_eq!(join("app/lib", "../x/./y"), "app/x/y");
        assert_eq!(join("app", "/abs"), "abs");
        assert!(is_node("nodejs") && !is_node("node-gyp"));
    }
}
