//! Checks that a command's `--help` reads like a man page: shared by the
//! `--help` tests of starlight, starlightd and starlight-proxy.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;
use std::process::Command;

/// The long help of `bin args… --help`.
pub fn help(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .env_remove("STARLIGHT_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?} --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?} --help failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help lists (its `Commands:` section, `help` aside).
pub fn subcommands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && name != "help" {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Problems with one help text: no usage line, no description, an option
/// or argument without its doc line, no examples (unless `examples` is
/// false, for a command with subcommands).
pub fn problems(what: &str, text: &str, examples: bool) -> Vec<String> {
    let mut p = Vec::new();
    if !text.contains("Usage:") {
        p.push(format!("{what}: no Usage line"));
    }
    let first = text.lines().next().unwrap_or("");
    if first.trim().len() < 10 {
        p.push(format!("{what}: no description ({first:?})"));
    }
    if examples && !text.contains("Examples:") {
        p.push(format!("{what}: no Examples section"));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut section = "";
    for (i, line) in lines.iter().enumerate() {
        // Any unindented line starts a section (or the text after them).
        if !line.starts_with(' ') && !line.is_empty() {
            section = line;
            continue;
        }
        if section != "Options:" && section != "Arguments:" {
            continue;
        }
        // An entry: `  -x, --flag <V>` / `      --flag` / `  <ARG>`, its doc
        // on the next lines, indented further.
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let entry = (t.starts_with('-') || t.starts_with('<') || t.starts_with('[')) && indent <= 6;
        if entry {
            let next = lines.get(i + 1).copied().unwrap_or("");
            let next_indent = next.len() - next.trim_start().len();
            let documented = !next.trim().is_empty() && next_indent > indent && next_indent >= 8;
            if !documented {
                p.push(format!("{what}: {t:?} has no doc line"));
            }
        }
    }
    p
}

/// Checks `bin`'s help and every subcommand's (recursively); panics
/// listing every problem. Returns the commands checked.
pub fn check_all(bin: &Path, name: &str) -> Vec<String> {
    let mut todo = vec![vec![]];
    let mut checked = Vec::new();
    let mut all = Vec::new();
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(bin, &args);
        let subs = subcommands(&text);
        let what = format!("{name} {}", args.join(" "));
        all.extend(problems(
            what.trim(),
            &text,
            subs.is_empty() || path.is_empty(),
        ));
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            todo.push(p);
        }
        checked.push(what.trim().to_string());
    }
    assert!(all.is_empty(), "--help problems:\n{}", all.join("\n"));
    checked
}
