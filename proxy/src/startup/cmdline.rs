//! Command lines and scripts: the program a command runs (through the
//! config's `PATH`), the files it names, and what shell and Python
//! scripts run in turn.

use super::entrypoint::{is_file, search_path};
use super::node::is_node;
use super::pyenv::is_python;
use super::shell::{self, needs_expansion, BUILTINS};
use super::{elf, Analysis, Work};
use crate::format::EntryKind;

/// Shells whose script (a file or a `-c` string) names what really runs.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh"];

/// Arguments after the program that may name a file it reads at once
/// (`redis-server /etc/redis.conf`, `node server.js`).
const FILE_ARGS: usize = 3;

/// What a Python interpreter runs first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PyMain {
    /// `python script.py` or a `#!` script: the file.
    Script(String),
    /// `python -m module`.
    Module(String),
    /// `python -c code`.
    Code(String),
    /// Nothing named (an interactive interpreter, standard input).
    Nothing,
}

/// A script to analyse once the loads queued before it are followed.
#[derive(Debug, Clone)]
pub(super) enum Script {
    /// A shell script file.
    Shell { path: String, depth: usize },
    /// A shell command string (`sh -c '...'`).
    ShellText { text: String, depth: usize },
    /// Files a command names: ordered (and followed) once the loads
    /// queued before them are.
    Files(Vec<String>),
    /// A Node.js program's entry script.
    Node { main: String, depth: usize },
    /// A Python interpreter's start.
    Python {
        interpreter: String,
        main: PyMain,
        depth: usize,
    },
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What `python ARGS` runs (options skipped as CPython parses them).
fn python_main(args: &[String]) -> PyMain {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let next = || args.get(i + 1).cloned();
        match a.as_str() {
            "-m" => return next().map_or(PyMain::Nothing, PyMain::Module),
            "-c" => return next().map_or(PyMain::Nothing, PyMain::Code),
            "-W" | "-X" | "--check-hash-based-pycs" => i += 2,
            "-" | "--" => return PyMain::Nothing,
            a if a.starts_with("-m") => return PyMain::Module(a[2..].to_string()),
            a if a.starts_with("-c") => return PyMain::Code(a[2..].to_string()),
            a if a.starts_with('-') => i += 1,
            a => return PyMain::Script(a.to_string()),
        }
    }
    PyMain::Nothing
}

impl Analysis<'_> {
    /// Finds program `name` as `execvp` would (relative paths in the
    /// working directory).
    fn find_program(&self, name: &str) -> Option<String> {
        if name.contains('/') {
            let p = self.command.in_workdir(name);
            return is_file(self.tree, &p).map(|_| p.trim_start_matches('/').to_string());
        }
        search_path(self.tree, name, &self.command.path)
    }

    /// Queues what command `argv` runs: its program, the files it names,
    /// and the script it starts (a shell's or a Python interpreter's).
    pub(super) fn command_line(&mut self, argv: &[String], depth: usize) {
        let Some(arg0) = argv.first() else {
            return;
        };
        let args = &argv[1..];
        if arg0 == "." || arg0 == "source" {
            if let Some(p) = args.first().and_then(|f| self.find_program(f)) {
                self.queue.push_back(Work::Program(p.clone()));
                self.scripts.push_back(Script::Shell { path: p, depth });
            }
            return;
        }
        if needs_expansion(arg0) || BUILTINS.contains(&arg0.as_str()) {
            return;
        }
        let Some(exe) = self.find_program(arg0) else {
            if depth == 0 {
                self.order.unresolved.push(arg0.clone());
            }
            return;
        };
        self.queue.push_back(Work::Program(exe.clone()));
        let real = self.tree.resolve(&exe).map_or(exe.clone(), |(r, _)| r);
        let names = [base(&real), base(&exe)];
        if names.contains(&"env") {
            let rest: Vec<String> = args
                .iter()
                .skip_while(|a| a.starts_with('-') || a.contains('='))
                .cloned()
                .collect();
            self.command_line(&rest, depth);
        } else if names.iter().any(|n| is_python(n)) {
            let main = match python_main(args) {
                PyMain::Script(s) => PyMain::Script(self.command.in_workdir(&s)),
                other => other,
            };
            self.scripts.push_back(Script::Python {
                interpreter: exe,
                main,
                depth,
            });
        } else if names.iter().any(|n| SHELLS.contains(n)) {
            self.shell_args(args, depth);
        } else if names.iter().any(|n| is_node(n)) {
            if let Some(main) = args.iter().find(|a| !a.starts_with('-')) {
                self.scripts.push_back(Script::Node {
                    main: self.command.in_workdir(main),
                    depth,
                });
            }
        } else {
            let files: Vec<String> = args
                .iter()
                .filter(|a| !a.starts_with('-') && !needs_expansion(a))
                .take(FILE_ARGS)
                .filter_map(|arg| is_file(self.tree, &self.command.in_workdir(arg)))
                .collect();
            if !files.is_empty() {
                self.scripts.push_back(Script::Files(files));
            }
        }
    }

    /// A shell's arguments: a `-c` string or a script file.
    fn shell_args(&mut self, args: &[String], depth: usize) {
        let mut i = 0;
        while let Some(a) = args.get(i) {
            if a.starts_with('-') && a != "--" {
                if a.len() > 1 && !a.starts_with("--") && a.contains('c') {
                    if let Some(text) = args.get(i + 1) {
                        self.scripts.push_back(Script::ShellText {
                            text: text.clone(),
                            depth,
                        });
                    }
                    return;
                }
                i += if a == "-o" || a == "+o" { 2 } else { 1 };
                continue;
            }
            let file = if a == "--" { args.get(i + 1) } else { Some(a) };
            if let Some(p) = file.and_then(|f| is_file(self.tree, &self.command.in_workdir(f))) {
                self.queue.push_back(Work::Program(p.clone()));
                self.scripts.push_back(Script::Shell { path: p, depth });
            }
            return;
        }
    }

    /// Queues the interpreter of the `#!` script `real`, and the script's
    /// own analysis when a shell or Python runs it.
    pub(super) fn shebang(&mut self, real: &str, interp: elf::Shebang) {
        let Some(interp_path) = interp.program.strip_prefix('/') else {
            return;
        };
        self.queue.push_back(Work::Program(interp_path.to_string()));
        let mut program = interp_path.to_string();
        if base(interp_path) == "env" {
            let arg = interp
                .argument
                .as_deref()
                .and_then(|a| a.split_whitespace().next())
                .filter(|a| !a.starts_with('-'));
            if let Some(arg) = arg {
                match search_path(self.tree, arg, &self.command.path) {
                    Some(p) => {
                        self.queue.push_back(Work::Program(p.clone()));
                        program = p;
                    }
                    None => self.order.unresolved.push(arg.to_string()),
                }
            }
        }
        let real_program = self
            .tree
            .resolve(&program)
            .map_or(program.clone(), |(r, _)| r);
        let names = [base(&program), base(&real_program)];
        let depth = self.depth;
        if names.iter().any(|n| is_python(n)) {
            self.scripts.push_back(Script::Python {
                interpreter: program,
                main: PyMain::Script(real.to_string()),
                depth,
            });
        } else if names.iter().any(|n| SHELLS.contains(n)) {
            self.scripts.push_back(Script::Shell {
                path: real.to_string(),
                depth,
            });
        } else if names.iter().any(|n| is_node(n)) {
            self.scripts.push_back(Script::Node {
                main: real.to_string(),
                depth,
            });
        }
    }

    /// The whole content of the regular file at `path` (resolved), if it
    /// is at most [`super::StartupLimits::max_source`] bytes and the read
    /// budget allows.
    pub(super) async fn read_source(&mut self, path: &str) -> Option<(String, Vec<u8>)> {
        let (real, entry) = self.tree.resolve(path)?;
        if !matches!(entry.entry.kind, EntryKind::File | EntryKind::Hardlink)
            || entry.entry.size > self.limits.max_source
        {
            return None;
        }
        if entry.entry.size == 0 {
            return Some((real, Vec::new()));
        }
        let bytes = self.read(&real, entry, entry.entry.size).await?;
        Some((real, bytes))
    }

    /// Analyses one script.
    pub(super) async fn script(&mut self, script: Script) {
        let depth = match &script {
            Script::Files(files) => {
                self.queue.extend(files.iter().cloned().map(Work::Program));
                return;
            }
            Script::Shell { depth, .. }
            | Script::ShellText { depth, .. }
            | Script::Node { depth, .. }
            | Script::Python { depth, .. } => *depth,
        };
        if depth >= self.limits.max_depth {
            return;
        }
        self.depth = depth + 1;
        match script {
            Script::Files(_) => {}
            Script::Shell { path, .. } => {
                if let Some((_, bytes)) = self.read_source(&path).await {
                    self.shell_text(&String::from_utf8_lossy(&bytes));
                }
            }
            Script::ShellText { text, .. } => self.shell_text(&text),
            Script::Node { main, .. } => self.node(&main).await,
            Script::Python {
                interpreter, main, ..
            } => self.python(&interpreter, main).await,
        }
    }

    fn shell_text(&mut self, text: &str) {
        for words in shell::commands(text) {
            self.command_line(&words, self.depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn python_options_are_skipped_as_cpython_parses_them() {
        assert_eq!(
            python_main(&args(&["-u", "-X", "dev", "app.py", "--port"])),
            PyMain::Script("app.py".into())
        );
        assert_eq!(
            python_main(&args(&["-B", "-m", "http.server"])),
            PyMain::Module("http.server".into())
        );
        assert_eq!(
            python_main(&args(&["-mflask", "run"])),
            PyMain::Module("flask".into())
        );
        assert_eq!(
            python_main(&args(&["-c", "import x"])),
            PyMain::Code("import x".into())
        );
        assert_eq!(python_main(&args(&["-i"])), PyMain::Nothing);
        assert_eq!(python_main(&args(&["-W"])), PyMain::Nothing);
    }
}
