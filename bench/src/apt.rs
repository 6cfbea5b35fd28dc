//! A private apt setup under the corpus cache: its own sources list (Debian
//! bookworm `main` only), package lists and caches, so resolving and
//! downloading packages neither reads nor changes the host's apt state.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run::run;

/// The Debian mirror and suite every layer is built from.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The Debian suite.
pub const SUITE: &str = "bookworm";
/// Debian's security archive (served by the same mirror host).
pub const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One package apt would install: name and exact version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// Package name (possibly arch-qualified).
    pub name: String,
    /// Exact version.
    pub version: String,
}

/// apt confined to a directory.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Sets up (idempotently) the private apt directories under `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        Self::with_sources(dir, false)
    }

    /// Like [`Apt::new`]; with `security`, Debian's security archive
    /// (`bookworm-security`, on the same mirror host) is a source too, so
    /// packages resolve to their newest security update.
    pub fn with_sources(dir: &Path, security: bool) -> Result<Self> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "state",
            "etc/sources.list.d",
            "etc/preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mut sources = format!("deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n");
        if security {
            sources.push_str(&format!(
                "deb [signed-by={KEYRING}] {SECURITY_MIRROR} {SUITE}-security main\n"
            ));
        }
        fs::write(dir.join("etc/sources.list"), sources).context("writing sources.list")?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// An `apt-get` command using the private directories and `status` as
    /// the dpkg status file (the packages considered installed).
    fn command(&self, status: &Path) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new("apt-get");
        cmd.arg("-q");
        for opt in [
            format!("Dir::Etc::SourceList={}", d("etc/sources.list")),
            format!("Dir::Etc::SourceParts={}", d("etc/sources.list.d")),
            format!("Dir::Etc::PreferencesParts={}", d("etc/preferences.d")),
            format!("Dir::State={}", d("state")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            format!("Dir::State::status={}", status.display()),
            "APT::Sandbox::User=root".to_string(),
            "APT::Install-Recommends=false".to_string(),
        ] {
            cmd.arg("-o").arg(opt);
        }
        cmd
    }

    /// Downloads the package lists once (skipped when already present).
    pub fn update(&self, status: &Path) -> Result<()> {
        let marker = self.dir.join("lists/.updated");
        if marker.exists() {
            return Ok(());
        }
        let mut cmd = self.command(status);
        cmd.arg("update");
        run(&mut cmd).context("apt-get update (private lists)")?;
        fs::write(&marker, b"").context("writing the apt lists marker")?;
        Ok(())
    }

    /// The packages apt would install for `wanted` on a system whose dpkg
    /// status file is `status` (recommends not installed, as in
    /// `apt-get install --no-install-recommends`).
    pub fn resolve(&self, status: &Path, wanted: &[&str]) -> Result<Vec<Package>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = self.command(status);
        cmd.args(["-s", "install"]).args(wanted);
        let out = run(&mut cmd).with_context(|| format!("resolving {}", wanted.join(" ")))?;
        let mut pkgs = parse_simulation(&out);
        pkgs.sort();
        Ok(pkgs)
    }

    /// Downloads `pkgs` into `dest` (the exact versions), returning the
    /// `.deb` files found there afterwards, sorted.
    pub fn download(&self, status: &Path, pkgs: &[Package], dest: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        if !pkgs.is_empty() {
            let mut cmd = self.command(status);
            cmd.current_dir(dest).arg("download");
            cmd.args(pkgs.iter().map(|p| format!("{}={}", p.name, p.version)));
            run(&mut cmd).context("apt-get download")?;
        }
        let mut debs = Vec::new();
        for entry in fs::read_dir(dest).with_context(|| format!("listing {}", dest.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                debs.push(path);
            }
        }
        debs.sort();
        if debs.len() != pkgs.len() {
            bail!(
                "expected {} packages in {}, found {}",
                pkgs.len(),
                dest.display(),
                debs.len()
            );
        }
        Ok(debs)
    }
}

/// Parses the `Inst name [old] (version suite [arch])` lines of
/// `apt-get -s install`.
pub fn parse_simulation(out: &str) -> Vec<Package> {
    out.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let mut words = rest.split_whitespace();
            let name = words.next()?.to_string();
            let open = rest.find('(')?;
            let version = rest[open + 1..].split_whitespace().next()?.to_string();
            Some(Package { name, version })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_inst_lines_only() {
        let out = "\
Reading package lists...
The following NEW packages will be installed:
  libpython3.11-minimal python3
Inst libpython3.11-minimal (3.11.2-6+deb12u6 Debian:12.11/stable [amd64])
Inst libc6 [2.36-9+deb12u9] (2.36-9+deb12u10 Debian:12.11/stable [amd64])
Inst python3-six (1.16.0-4 Debian:12.11/stable [all])
Conf libpython3.11-minimal (3.11.2-6+deb12u6 Debian:12.11/stable [amd64])
";
        assert_eq!(
            parse_simulation(out),
            vec![
                Package {
                    name: "libpython3.11-minimal".into(),
                    version: "3.11.2-6+deb12u6".into()
                },
                Package {
                    name: "libc6".into(),
                    version: "2.36-9+deb12u10".into()
                },
                Package {
                    name: "python3-six".into(),
                    version: "1.16.0-4".into()
                },
            ]
        );
    }

    #[test]
    fn private_dirs_and_sources_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let _apt = Apt::new(dir.path()).unwrap();
        let sources = fs::read_to_string(dir.path().join("etc/sources.list")).unwrap();
        assert_eq!(
            sources,
            format!("deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n")
        );
        assert!(dir.path().join("lists/partial").is_dir());
        assert!(dir.path().join("cache/archives/partial").is_dir());
    }
}
