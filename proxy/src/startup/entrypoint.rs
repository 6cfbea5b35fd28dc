//! The command an image runs, from its configuration, and `PATH` lookup.

use serde::Deserialize;

use super::tree::Tree;
use super::StartupError;
use crate::format::EntryKind;

/// The `PATH` a container gets when its configuration sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    /// `PYTHONPATH` directories.
    pub python_path: Vec<String>,
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
        python_path: var("PYTHONPATH").map(split).unwrap_or_default(),
        working_dir: c
            .working_dir
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".to_string()),
    })
}

/// Whether `path` resolves to a regular file.
pub fn is_file(tree: &Tree<'_>, path: &str) -> Option<String> {
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
    /// `arg` as an absolute path (relative ones are in the working directory).
    pub fn in_workdir(&self, arg: &str) -> String {
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
}
