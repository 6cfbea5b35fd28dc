//! A `docker-registry` (CNCF distribution) process serving a storage
//! directory the harness keeps (the corpus registry under the cache).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::daemon::{Daemon, Place};

/// A running registry; stopped on drop.
pub struct Registry {
    /// `HOST:PORT` clients use.
    pub addr: String,
    daemon: Daemon,
    place: Place,
}

impl Registry {
    /// Starts a registry on `listen` (e.g. `127.0.0.1:5000`) serving
    /// `storage`, with its config and log in `dir`; waits until `/v2/`
    /// answers at `addr` from `place`.
    pub fn start(
        storage: &Path,
        listen: &str,
        addr: &str,
        place: &Place,
        dir: &Path,
    ) -> Result<Self> {
        fs::create_dir_all(storage)?;
        fs::create_dir_all(dir)?;
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {listen}\n",
                storage.display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = place.command("docker-registry");
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn("docker-registry", cmd, &dir.join("registry.log"))?;
        let url = format!("http://{addr}/v2/");
        daemon.wait_until(Duration::from_secs(20), || {
            place
                .command("curl")
                .args(["-fsS", "-o", "/dev/null", "--max-time", "2", &url])
                .status()
                .is_ok_and(|s| s.success())
        })?;
        Ok(Self {
            addr: addr.to_string(),
            daemon,
            place: place.clone(),
        })
    }

    /// Whether `repo:tag` exists.
    pub fn has(&self, repo: &str, tag: &str) -> bool {
        self.place
            .command("curl")
            .args(["-fs", "-o", "/dev/null", "--max-time", "10", "-I"])
            .args([
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                "-H",
                "Accept: application/vnd.docker.distribution.manifest.v2+json",
            ])
            .arg(format!("http://{}/v2/{repo}/manifests/{tag}", self.addr))
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the registry.
    pub fn stop(mut self) {
        self.daemon.stop_within(Duration::from_secs(5));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// `skopeo copy` from an OCI layout to a plain-HTTP registry.
pub fn push_layout(layout: &Path, tag: &str, dest: &str) -> Result<()> {
    crate::run::run(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}")),
    )
    .with_context(|| format!("pushing {dest}"))?;
    Ok(())
}
