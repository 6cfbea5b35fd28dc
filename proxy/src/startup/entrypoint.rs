//! The command an image runs, from its configuration, and `PATH` lookup.

use serde::Deserialize;

use super::tree::Tree;
use super::StartupError;
use crate::format::EntryKind;

/// The `PATH` a container gets when its configuration sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Shells whose `-c` string names the program that really runs.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh"];

/// Arguments after the program that may name a file it reads at once
/// (`python3 app.py`, `node server.js`).
const FILE_ARGS: usize = 3;

#[derive(Deserialize)]
struct ConfigFile {
    config: Option<ExecConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ExecConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
}

/// What a container of the image runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// `Entrypoint` followed by `Cmd`.
    pub argv: Vec<String>,
    /// The `PATH` directories.
    pub path: Vec<String>,
    /// `LD_LIBRARY_PATH` directories.
    pub library_path: Vec<String>,
    /// The working directory (absolute; `/` if unset).
    pub working_dir: String,
}

/// The command of the image configuration `config_json`.
pub fn command_of(config_json: &[u8]) -> Result<Command, StartupError> {
    let file: ConfigFile =
        serde_json::from_slice(config_json).map_err(|e| StartupError::Config(e.to_string()))?;
    let c = file.config.unwrap_or_default();
    let mut argv = c.entrypoint.unwrap_or_default();
    argv.extend(c.cmd.unwrap_or_default());
    let env = c.env.unwrap_or_default();
    let var = |name: &str| {
        env.iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    let split = |v: String| -> Vec<String> {
        v.split(':')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(Command {
        argv,
        path: split(var("PATH").unwrap_or_else(|| DEFAULT_PATH.to_string())),
        library_path: var("LD_LIBRARY_PATH").map(split).unwrap_or_default(),
        working_dir: c
            .working_dir
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".to_string()),
    })
}

/// The default `PATH`, split.
pub fn default_path() -> Vec<String> {
    DEFAULT_PATH.split(':').map(str::to_string).collect()
}

/// Whether `path` resolves to a regular file.
fn is_file(tree: &Tree<'_>, path: &str) -> Option<String> {
    let (real, e) = tree.resolve(path)?;
    matches!(e.entry.kind, EntryKind::File | EntryKind::Hardlink).then_some(real)
}

/// Finds program `name` as `execvp` would: a name with a `/` as is, else
/// the first `dirs` entry holding it. Returns the path as written (links
/// are resolved later).
pub fn search_path(tree: &Tree<'_>, name: &str, dirs: &[String]) -> Option<String> {
    if name.contains('/') {
        return is_file(tree, name).map(|_| name.trim_start_matches('/').to_string());
    }
    dirs.iter()
        .map(|d| format!("{}/{name}", d.trim_matches('/')))
        .find(|p| is_file(tree, p).is_some())
}

impl Command {
    fn in_workdir(&self, arg: &str) -> String {
        if arg.starts_with('/') {
            arg.to_string()
        } else {
            format!("{}/{arg}", self.working_dir.trim_end_matches('/'))
        }
    }

    /// The executable the container starts, if the image has it.
    pub fn executable(&self, tree: &Tree<'_>) -> Option<String> {
        let arg0 = self.argv.first()?;
        if arg0.contains('/') {
            let p = self.in_workdir(arg0);
            return is_file(tree, &p).map(|_| p.trim_start_matches('/').to_string());
        }
        search_path(tree, arg0, &self.path)
    }

    /// Further programs and files the command names: the program a shell's
    /// `-c` string runs, and arguments that are files of the image.
    pub fn named_files(&self, tree: &Tree<'_>) -> (Vec<String>, Vec<String>) {
        let mut programs = Vec::new();
        let mut files = Vec::new();
        let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
        let Some(arg0) = self.argv.first() else {
            return (programs, files);
        };
        let rest = &self.argv[1..];
        if SHELLS.contains(&base(arg0).as_str()) && rest.first().map(String::as_str) == Some("-c") {
            if let Some(script) = rest.get(1) {
                let mut words = script
                    .split_whitespace()
                    .skip_while(|w| *w == "exec" || w.contains('='));
                if let Some(program) = words.next() {
                    let found = if program.contains('/') {
                        let p = self.in_workdir(program);
                        is_file(tree, &p).map(|_| p.trim_start_matches('/').to_string())
                    } else {
                        search_path(tree, program, &self.path)
                    };
                    programs.extend(found);
                    for w in words.take(FILE_ARGS) {
                        files.extend(is_file(tree, &self.in_workdir(w)));
                    }
                }
            }
            return (programs, files);
        }
        for arg in rest.iter().take(FILE_ARGS) {
            if arg.starts_with('-') {
                continue;
            }
            files.extend(is_file(tree, &self.in_workdir(arg)));
        }
        (programs, files)
    }
}
