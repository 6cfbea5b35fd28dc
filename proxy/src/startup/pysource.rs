//! The `import` statements a Python module runs when it is imported,
//! found by a small scanner of its source (no evaluation).
//!
//! Only statements that run at import time count: module-level ones and
//! those inside module-level `if`/`try`/`with`/`for` blocks and class
//! bodies; a `def` body runs later (lazy imports), and `if TYPE_CHECKING:`
//! never. Strings (triple-quoted ones included), comments, bracketed and
//! backslash-continued lines are handled as the tokenizer would, so a
//! docstring that mentions `import x` is not an import. Malformed input
//! yields fewer imports, never an error.

/// One `import` statement's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Leading dots of a relative import (0: absolute).
    pub level: usize,
    /// The dotted module (may be empty for `from . import x`).
    pub module: String,
    /// Names after `from ... import` (empty for `import x`); `*` kept.
    pub names: Vec<String>,
}

/// One logical line: its indentation and text (comments and string
/// contents blanked).
struct Logical {
    indent: usize,
    text: String,
}

/// Splits `source` into logical lines, as Python's tokenizer joins them.
fn logical_lines(source: &str) -> Vec<Logical> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut indent = 0usize;
    let mut at_line_start = true;
    let mut depth = 0usize;
    let mut i = 0usize;
    let finish = |text: &mut String, indent: usize, out: &mut Vec<Logical>| {
        if !text.trim().is_empty() {
            out.push(Logical {
                indent,
                text: std::mem::take(text),
            });
        }
        text.clear();
    };
    while i < bytes.len() {
        let b = bytes[i];
        if at_line_start {
            let mut n = 0usize;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                n += if bytes[i] == b'\t' { 8 - n % 8 } else { 1 };
                i += 1;
            }
            indent = n;
            at_line_start = false;
            continue;
        }
        match b {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'\\' if bytes.get(i + 1) == Some(&b'\n') => {
                text.push(' ');
                i += 2;
            }
            b'\n' => {
                i += 1;
                if depth == 0 {
                    finish(&mut text, indent, &mut out);
                    at_line_start = true;
                } else {
                    text.push(' ');
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                text.push(b as char);
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                text.push(b as char);
                i += 1;
            }
            b'\'' | b'"' => {
                i = skip_string(bytes, i);
                text.push_str("\"\"");
            }
            _ => {
                // Multi-byte UTF-8 is copied byte-wise through char boundaries.
                let len = utf8_len(b);
                let end = (i + len).min(bytes.len());
                text.push_str(std::str::from_utf8(&bytes[i..end]).unwrap_or(" "));
                i = end;
            }
        }
    }
    finish(&mut text, indent, &mut out);
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// The index just after the string literal starting with the quote at `i`.
fn skip_string(bytes: &[u8], i: usize) -> usize {
    let quote = bytes[i];
    let triple = bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote);
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'\n' if !triple => return j,
            c if c == quote => {
                if !triple {
                    return j + 1;
                }
                if bytes.get(j + 1) == Some(&quote) && bytes.get(j + 2) == Some(&quote) {
                    return j + 3;
                }
                j += 1;
            }
            _ => j += 1,
        }
    }
    bytes.len()
}

/// Whether `text` opens a block whose body does not run at import time.
fn lazy_block(text: &str) -> bool {
    let t = text.trim_start();
    let t = t.strip_prefix("async ").map_or(t, str::trim_start);
    if t.starts_with("def ") || t.starts_with("def\t") {
        return true;
    }
    let cond = t.strip_prefix("if ").map(str::trim);
    matches!(
        cond.map(|c| c.trim_end_matches(':').trim()),
        Some("TYPE_CHECKING" | "typing.TYPE_CHECKING" | "False" | "0")
    )
}

/// The imports `source` runs when imported (see the module docs).
pub fn imports(source: &str) -> Vec<Import> {
    let mut out = Vec::new();
    // Indentation of an open lazy block: lines deeper than it are skipped.
    let mut lazy_at: Option<usize> = None;
    for line in logical_lines(source) {
        if let Some(level) = lazy_at {
            if line.indent > level {
                continue;
            }
            lazy_at = None;
        }
        if lazy_block(&line.text) {
            lazy_at = Some(line.indent);
            continue;
        }
        for stmt in line.text.split(';') {
            parse_statement(stmt, &mut out);
        }
    }
    out
}

/// Whether `name` is a dotted Python identifier.
pub fn is_dotted(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && chars.all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// Strips a block header (`try:`, `else:`, `if x:` ...) that shares the
/// line with its statement (`try: import x`).
fn after_colon(stmt: &str) -> &str {
    let t = stmt.trim();
    for kw in ["try:", "else:", "finally:"] {
        if let Some(rest) = t.strip_prefix(kw) {
            return rest.trim();
        }
    }
    t
}

fn parse_statement(stmt: &str, out: &mut Vec<Import>) {
    let stmt = after_colon(stmt);
    if let Some(rest) = stmt.strip_prefix("import ") {
        for part in rest.split(',') {
            let name = part.split_whitespace().next().unwrap_or("");
            if is_dotted(name) {
                out.push(Import {
                    level: 0,
                    module: name.to_string(),
                    names: Vec::new(),
                });
            }
        }
    } else if let Some(rest) = stmt.strip_prefix("from ") {
        let Some((from, names)) = rest.split_once(" import") else {
            return;
        };
        let from = from.trim();
        let level = from.chars().take_while(|&c| c == '.').count();
        let module = &from[level..];
        if !module.is_empty() && !is_dotted(module) {
            return;
        }
        if level == 0 && module.is_empty() {
            return;
        }
        let names = names
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .filter_map(|n| n.split_whitespace().next())
            .filter(|n| *n == "*" || is_dotted(n))
            .map(str::to_string)
            .collect();
        out.push(Import {
            level,
            module: module.to_string(),
            names,
        });
    }
}

/// The absolute name of `import` run by module `current` (a package when
/// `is_package`); `None` when a relative import climbs above the top.
pub fn absolute(import: &Import, current: &str, is_package: bool) -> Option<String> {
    if import.level == 0 {
        return Some(import.module.clone());
    }
    let mut parts: Vec<&str> = current.split('.').filter(|p| !p.is_empty()).collect();
    if !is_package {
        parts.pop()?;
    }
    for _ in 1..import.level {
        parts.pop()?;
    }
    if parts.is_empty() {
        return None;
    }
    if !import.module.is_empty() {
        parts.push(&import.module);
    }
    Some(parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(source: &str) -> Vec<String> {
        imports(source)
            .into_iter()
            .map(|i| format!("{}{}:{}", ".".repeat(i.level), i.module, i.names.join(",")))
            .collect()
    }

    #[test]
    fn module_level_imports_in_every_form() {
        let src = "\"\"\"Docs: import not_this\n  from nor import this\n\"\"\"\nimport os, sys as system\nimport a.b.c\nfrom x.y import (\n    p,\n    q as r,  # import no\n)\nfrom . import sib\nfrom ..up import thing\nimport json; import re\nfrom z import \\\n    w\ntry:\n    import fast\nexcept ImportError:\n    import slow\nif sys.version_info > (3,):\n    from new import n\nclass K:\n    import inclass\nx = 'import no'\n";
        assert_eq!(
            names(src),
            vec![
                "os:",
                "sys:",
                "a.b.c:",
                "x.y:p,q",
                ".:sib",
                "..up:thing",
                "json:",
                "re:",
                "z:w",
                "fast:",
                "slow:",
                "new:n",
                "inclass:",
            ]
        );
    }

    #[test]
    fn function_bodies_and_type_checking_blocks_are_lazy() {
        let src = "import a\ndef f():\n    import lazy\n    if x:\n        import lazier\nasync def g():\n    import alsolazy\nif TYPE_CHECKING:\n    import typing_only\nelse:\n    import b\nclass C:\n    def m(self):\n        import lazy2\n    import c\nimport d\n";
        assert_eq!(names(src), vec!["a:", "b:", "c:", "d:"]);
    }

    #[test]
    fn hostile_input_yields_nothing_and_does_not_panic() {
        for src in [
            "",
            "'''unterminated",
            "import",
            "from import x",
            "from . import",
            "(((((((",
            "\\",
            "import 3x, -y",
            "from ... import *",
            "\u{feff}import é",
            "x = \"\\\"\nimport after",
        ] {
            let _ = imports(src);
        }
        assert_eq!(names("x = \"\\\"\"\nimport after\n"), vec!["after:"]);
        assert_eq!(names("from .... import *"), vec!["....:*"]);
        let big = "(".repeat(100_000) + "import x";
        assert!(imports(&big).is_empty());
    }

    #[test]
    fn relative_imports_resolve_against_the_package() {
        let imp = |level, module: &str| Import {
            level,
            module: module.to_string(),
            names: Vec::new(),
        };
        assert_eq!(absolute(&imp(1, "b"), "p.q.mod", false).unwrap(), "p.q.b");
        assert_eq!(absolute(&imp(1, ""), "p.q", true).unwrap(), "p.q");
        assert_eq!(absolute(&imp(2, "x"), "p.q.mod", false).unwrap(), "p.x");
        assert_eq!(absolute(&imp(3, "x"), "p.q.mod", false), None);
        assert_eq!(absolute(&imp(0, "os"), "whatever", false).unwrap(), "os");
    }
}
