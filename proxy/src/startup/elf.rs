//! What loading a file needs: an ELF object's interpreter, libraries and
//! search paths, or a script's `#!` interpreter.

use goblin::elf::Elf;

/// Longest `#!` line the kernel reads.
const MAX_SHEBANG: usize = 256;

/// Whether `head` starts with the ELF magic.
pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

/// A script's `#!` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shebang {
    /// The interpreter's path as written.
    pub program: String,
    /// The single optional argument (the rest of the line, trimmed).
    pub argument: Option<String>,
}

/// Parses the `#!` line at the start of `head`, as the kernel does: the
/// interpreter path, then at most one argument (the rest of the line).
pub fn shebang(head: &[u8]) -> Option<Shebang> {
    let rest = head.strip_prefix(b"#!")?;
    let line = &rest[..rest.len().min(MAX_SHEBANG)];
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(n) => &line[..n],
        None => line,
    };
    let line = std::str::from_utf8(line).ok()?.trim();
    let (program, argument) = match line.split_once([' ', '\t']) {
        Some((p, a)) => (p, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    if program.is_empty() {
        return None;
    }
    Some(Shebang {
        program: program.to_string(),
        argument,
    })
}

/// The dynamic-loading facts of an ELF object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `PT_INTERP`: the dynamic loader.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories (colon lists split).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories.
    pub runpath: Vec<String>,
}

impl ElfInfo {
    /// Parses a whole ELF file; `None` if it is not valid ELF.
    pub fn parse(bytes: &[u8]) -> Option<ElfInfo> {
        let elf = Elf::parse(bytes).ok()?;
        let split = |list: &[&str]| -> Vec<String> {
            list.iter()
                .flat_map(|l| l.split(':'))
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        };
        Some(ElfInfo {
            interpreter: elf.interpreter.map(str::to_string),
            needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
            rpath: split(&elf.rpaths),
            runpath: split(&elf.runpaths),
        })
    }
}
