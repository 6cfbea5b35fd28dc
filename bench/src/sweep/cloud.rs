//! The cloud side of a sweep: the corpus registry and a Starlight proxy,
//! in the cloud network namespace of an emulated link (or on loopback).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::daemon::{run_bounded, Daemon, Place};
use crate::registry::{free_port, Registry};
use crate::sweep::worker::ProxyAccess;

/// Bearer token the harness's proxy accepts.
pub const TOKEN: &str = "starlight-bench";

/// Where the cloud services listen.
#[derive(Debug, Clone)]
pub struct CloudAddrs {
    /// The cloud host's address as the worker sees it.
    pub host: String,
    /// Registry TCP port.
    pub registry_port: u16,
}

/// Registry plus proxy; stopped on drop (proxy first).
pub struct Cloud {
    /// The addresses.
    pub addrs: CloudAddrs,
    /// How workers reach the proxy.
    pub proxy: ProxyAccess,
    proxy_daemon: Option<Daemon>,
    registry: Option<Registry>,
    place: Place,
}

impl Cloud {
    /// Starts the registry (storage `storage`) and the proxy (database and
    /// certificate under `dir`) in `place`, listening on `host`.
    pub fn start(
        place: &Place,
        host: &str,
        storage: &Path,
        dir: &Path,
        proxy_bin: &Path,
        with_proxy: bool,
        send_window: u64,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let (registry_port, proxy_port) = if host.starts_with("127.") {
            (free_port()?, free_port()?)
        } else {
            (5000, 4433)
        };
        let reg_addr = format!("{host}:{registry_port}");
        let registry = Registry::start(
            storage,
            &if host.starts_with("127.") {
                reg_addr.clone()
            } else {
                format!("0.0.0.0:{registry_port}")
            },
            &reg_addr,
            place,
            &dir.join("registry"),
        )?;
        let certs = dir.join("certs");
        let ca_file = certs.join("cert.pem");
        let mut cloud = Cloud {
            addrs: CloudAddrs {
                host: host.to_string(),
                registry_port,
            },
            proxy: ProxyAccess {
                addr: format!("{host}:{proxy_port}"),
                server_name: host.to_string(),
                ca_file: ca_file.clone(),
                token: TOKEN.to_string(),
            },
            proxy_daemon: None,
            registry: Some(registry),
            place: place.clone(),
        };
        if !with_proxy {
            return Ok(cloud);
        }
        run_bounded(
            std::process::Command::new(proxy_bin)
                .args(["gen-cert", "--out"])
                .arg(&certs)
                .args(["--name", host, "--name", "127.0.0.1", "--name", "localhost"]),
            Duration::from_secs(30),
        )
        .context("starlight-proxy gen-cert")?;
        // Bytes in flight per connection: quinn fails a stream ("too many
        // gaps in stream buffer") once more than 1024 holes are pending, which
        // a slow-start overshoot far beyond the path's BDP + queue causes on
        // a tail-drop link; the window is sized to the path instead.
        let config = dir.join("proxy.toml");
        fs::write(&config, format!("[serve]\nsend_window = {send_window}\n"))?;
        let mut cmd = place.command(proxy_bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("{host}:{proxy_port}"))
            .arg("--registry")
            .arg(&reg_addr)
            .arg("--plain-http")
            .arg("--db")
            .arg(dir.join("proxy-db"))
            .arg("--cert")
            .arg(&ca_file)
            .arg("--key")
            .arg(certs.join("key.pem"))
            .arg("--token")
            .arg(TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let out = dir.join("proxy.log");
        let mut daemon = Daemon::spawn("starlight-proxy", cmd, &out)?;
        daemon.wait_until(Duration::from_secs(30), || {
            fs::read_to_string(&out).is_ok_and(|t| t.contains("listening on"))
        })?;
        cloud.proxy_daemon = Some(daemon);
        Ok(cloud)
    }

    /// `HOST:PORT/NAME:TAG` of an image in the registry.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!(
            "{}:{}/{name}:{tag}",
            self.addrs.host, self.addrs.registry_port
        )
    }

    /// Whether the registry holds `name:tag`.
    pub fn has(&self, name: &str, tag: &str) -> bool {
        self.registry.as_ref().is_some_and(|r| r.has(name, tag))
    }

    /// Has the proxy index `image` (and build its bundle once) by fetching
    /// it from inside the cloud namespace, so the timed runs measure
    /// provisioning, not first-time indexing.
    pub fn warm(
        &self,
        starlight: &Path,
        image: &str,
        from: Option<&str>,
        scratch: &Path,
    ) -> Result<()> {
        let mut cmd = self.place.command(starlight);
        cmd.arg("fetch")
            .arg("--proxy")
            .arg(&self.proxy.addr)
            .arg("--ca")
            .arg(&self.proxy.ca_file)
            .arg("--token")
            .arg(&self.proxy.token);
        if let Some(from) = from {
            cmd.arg("--from").arg(from);
        }
        cmd.arg("--no-verify").arg("-o").arg(scratch).arg(image);
        let r = run_bounded(&mut cmd, Duration::from_secs(600));
        let _ = fs::remove_file(scratch);
        r.map(|_| ())
            .with_context(|| format!("warming the proxy with {image}"))
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut d) = self.proxy_daemon.take() {
            d.stop_within(Duration::from_secs(3));
        }
        if let Some(r) = self.registry.take() {
            r.stop();
        }
    }
}
