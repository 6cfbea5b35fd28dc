//! A Python interpreter's module search, as its path finder searches:
//! the interpreter's version and standard library found in the merged
//! table of contents, `sys.path`, and module names resolved to the files
//! the import system opens (`__init__.py`, `mod.py`, extension modules,
//! `__pycache__/*.cpython-XY.pyc`).

use super::tree::Tree;
use crate::format::EntryKind;

/// Modules every start of CPython 3.11+ imports from files before the
/// site directories' `.pth` files (the others are frozen into the
/// interpreter).
pub const STARTUP_MODULES: &[&str] = &["encodings", "encodings.aliases", "encodings.utf_8"];

/// Modules `site` imports after the `.pth` files.
pub const SITE_HOOKS: &[&str] = &["sitecustomize", "usercustomize"];

/// Modules CPython before 3.11 also imports from files at start.
pub const STARTUP_MODULES_OLD: &[&str] = &[
    "codecs",
    "encodings.latin_1",
    "io",
    "abc",
    "site",
    "os",
    "stat",
    "_collections_abc",
    "posixpath",
    "genericpath",
    "_sitebuiltins",
    "_bootlocale",
];

/// Files the interpreter reads at start besides modules (locale set-up).
pub const STARTUP_FILES: &[&str] = &[
    "usr/lib/locale/C.utf8/LC_CTYPE",
    "usr/lib/locale/C.UTF-8/LC_CTYPE",
    "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
    "usr/share/locale/locale.alias",
];

/// Whether file name `name` is a CPython interpreter (`python`,
/// `python3`, `python3.11`).
pub fn is_python(name: &str) -> bool {
    name.strip_prefix("python")
        .is_some_and(|v| v.bytes().all(|c| c.is_ascii_digit() || c == b'.'))
}

/// The `X.Y` version in a `pythonX.Y` file name.
fn version_of(name: &str) -> Option<(u32, u32)> {
    let v = name.strip_prefix("python")?;
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Where an interpreter finds modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PyEnv {
    /// `(major, minor)`, if found.
    pub version: Option<(u32, u32)>,
    /// `sys.path` after the main directory: `PYTHONPATH`, the standard
    /// library, `lib-dynload`, then the site directories (existing
    /// directories only, real paths).
    pub path: Vec<String>,
    /// The site directories (searched for `.pth` files).
    pub site: Vec<String>,
}

fn is_dir(tree: &Tree<'_>, path: &str) -> Option<String> {
    let (real, e) = tree.resolve(path)?;
    (e.entry.kind == EntryKind::Dir).then_some(real)
}

fn is_file(tree: &Tree<'_>, path: &str) -> Option<String> {
    let (real, e) = tree.resolve(path)?;
    matches!(e.entry.kind, EntryKind::File | EntryKind::Hardlink).then_some(real)
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl PyEnv {
    /// The environment of the interpreter at `written` (as named, for a
    /// virtual environment's `pyvenv.cfg`) whose real path is `real`, with
    /// `PYTHONPATH` directories `python_path`.
    pub fn detect(tree: &Tree<'_>, written: &str, real: &str, python_path: &[String]) -> PyEnv {
        let prefix = parent(parent(real)).to_string();
        let mut prefixes = vec![prefix.clone()];
        for p in ["usr/local", "usr"] {
            if !prefixes.iter().any(|q| q == p) {
                prefixes.push(p.to_string());
            }
        }
        let version = version_of(base(real))
            .or_else(|| version_of(base(written)))
            .or_else(|| {
                prefixes.iter().find_map(|p| {
                    let lib = is_dir(tree, &format!("{p}/lib"))?;
                    tree.children(&lib).into_iter().find_map(|d| {
                        let v = version_of(base(d))?;
                        is_file(tree, &format!("{d}/os.py")).map(|_| v)
                    })
                })
            });
        let mut env = PyEnv {
            version,
            ..PyEnv::default()
        };
        let add = |list: &mut Vec<String>, dir: &str| {
            if let Some(real) = is_dir(tree, dir) {
                if !list.contains(&real) {
                    list.push(real);
                }
            }
        };
        for d in python_path {
            add(&mut env.path, d.trim_start_matches('/'));
        }
        let Some((major, minor)) = version else {
            return env;
        };
        let lib = format!("lib/python{major}.{minor}");
        if let Some(stdlib) = prefixes
            .iter()
            .map(|p| format!("{p}/{lib}"))
            .find(|d| is_file(tree, &format!("{d}/os.py")).is_some())
        {
            add(&mut env.path, &stdlib);
            add(&mut env.path, &format!("{stdlib}/lib-dynload"));
        }
        let mut site = Vec::new();
        // A virtual environment: `pyvenv.cfg` beside the `bin` directory.
        let venv = parent(parent(written.trim_start_matches('/')));
        if is_file(tree, &format!("{venv}/pyvenv.cfg")).is_some() {
            add(&mut site, &format!("{venv}/{lib}/site-packages"));
        }
        for p in &prefixes {
            add(&mut site, &format!("{p}/{lib}/site-packages"));
            add(&mut site, &format!("{p}/local/{lib}/dist-packages"));
            add(&mut site, &format!("{p}/{lib}/dist-packages"));
            add(&mut site, &format!("{p}/lib/python{major}/dist-packages"));
        }
        for s in &site {
            add(&mut env.path, s);
        }
        env.site = site;
        env
    }

    /// The startup modules of this interpreter.
    pub fn startup_modules(&self) -> Vec<&'static str> {
        let old = self.version.is_none_or(|v| v < (3, 11));
        let mut out = Vec::new();
        if old {
            out.extend_from_slice(STARTUP_MODULES_OLD);
        }
        out.extend_from_slice(STARTUP_MODULES);
        out
    }

    fn tag(&self) -> Option<String> {
        self.version.map(|(a, b)| format!("{a}{b}"))
    }
}

/// What a module name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Whether it is a package (relative imports resolve against itself).
    pub package: bool,
    /// Its source to parse for imports (`.py`), if any.
    pub source: Option<String>,
    /// The file the import system loads: the cached bytecode when present,
    /// else the source, the extension module or the sourceless `.pyc`;
    /// `None` for a namespace package.
    pub load: Option<String>,
    /// Whether `load` is an extension module (an ELF object).
    pub extension: bool,
    /// A package's `__path__` (directories searched for its submodules).
    pub search: Vec<String>,
}

/// Finds module `name` (one component) in directories `dirs`, as the
/// path finder does: a regular package, then an extension module, a
/// source file or a sourceless bytecode file, in each directory in turn;
/// failing those, a namespace package of every directory named `name`.
pub fn find(tree: &Tree<'_>, env: &PyEnv, dirs: &[String], name: &str) -> Option<Module> {
    let tag = env.tag();
    let pyc = |dir: &str, stem: &str| {
        let tag = tag.as_ref()?;
        is_file(tree, &format!("{dir}/__pycache__/{stem}.cpython-{tag}.pyc"))
    };
    let source = |dir: &str, stem: &str| {
        let py = is_file(tree, &format!("{dir}/{stem}.py"))?;
        let load = pyc(dir, stem).unwrap_or_else(|| py.clone());
        Some((py, load))
    };
    let mut namespace = Vec::new();
    for dir in dirs {
        let dir = dir.trim_end_matches('/');
        if let Some(pkg) = is_dir(tree, &format!("{dir}/{name}")) {
            if let Some((py, load)) = source(&pkg, "__init__") {
                return Some(Module {
                    package: true,
                    source: Some(py),
                    load: Some(load),
                    extension: false,
                    search: vec![pkg],
                });
            }
            namespace.push(pkg);
        }
        let mut extensions = Vec::new();
        if let Some(tag) = &tag {
            extensions.push(format!("{name}.cpython-{tag}-x86_64-linux-gnu.so"));
        }
        extensions.push(format!("{name}.abi3.so"));
        extensions.push(format!("{name}.so"));
        if let Some(so) = extensions
            .iter()
            .find_map(|f| is_file(tree, &format!("{dir}/{f}")))
        {
            return Some(Module {
                package: false,
                source: None,
                load: Some(so),
                extension: true,
                search: Vec::new(),
            });
        }
        if let Some((py, load)) = source(dir, name) {
            return Some(Module {
                package: false,
                source: Some(py),
                load: Some(load),
                extension: false,
                search: Vec::new(),
            });
        }
        if let Some(pyc) = is_file(tree, &format!("{dir}/{name}.pyc")) {
            return Some(Module {
                package: false,
                source: None,
                load: Some(pyc),
                extension: false,
                search: Vec::new(),
            });
        }
    }
    (!namespace.is_empty()).then_some(Module {
        package: true,
        source: None,
        load: None,
        extension: false,
        search: namespace,
    })
}

/// The module names a `.pth` file's `import` lines import (`import x`
/// statements and `__import__('x')` calls); other lines are directories
/// (returned second, relative to the site directory `site`).
pub fn pth_lines(text: &str, site: &str) -> (Vec<String>, Vec<String>) {
    let mut modules = Vec::new();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("import ") || line.starts_with("import\t") {
            modules.extend(super::pysource::imports(line).into_iter().map(|i| i.module));
            let mut rest = line;
            while let Some(at) = rest.find("__import__(") {
                rest = &rest[at + "__import__(".len()..];
                let quoted = rest.trim_start_matches(['\'', '"']);
                let name: String = quoted
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                    .collect();
                if super::pysource::is_dotted(&name) {
                    modules.push(name);
                }
            }
        } else if !line.contains('\0') {
            let dir = if line.starts_with('/') {
                line.trim_start_matches('/').to_string()
            } else {
                format!("{site}/{line}")
            };
            dirs.push(dir);
        }
    }
    (modules, dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_names_and_versions() {
        assert!(is_python("python3.11"));
        assert!(is_python("python"));
        assert!(!is_python("python3-config"));
        assert!(!is_python("pythonic"));
        assert_eq!(version_of("python3.12"), Some((3, 12)));
        assert_eq!(version_of("python3"), None);
    }

    #[test]
    fn pth_files_import_and_extend_the_path() {
        let text = "# comment\nimport os; var = 'X'; enabled = True; enabled and __import__('_distutils_hack').add_shim(); __import__('a..b')\n../extra\n/opt/abs\n";
        let (modules, dirs) = pth_lines(text, "usr/lib/python3/dist-packages");
        assert_eq!(modules, vec!["os", "_distutils_hack"]);
        assert_eq!(
            dirs,
            vec!["usr/lib/python3/dist-packages/../extra", "opt/abs"]
        );
    }
}
