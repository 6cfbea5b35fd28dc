//! The cloud side of a sweep: the corpus registry and Starlight proxies,
//! in the cloud network namespace of an emulated link (or on loopback).
//! Each bundle order the sweep measures has a proxy of its own (its own
//! database, so its own traces): the never-traced proxy never sees a trace
//! of what the traced ones learn.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::daemon::{run_bounded, Daemon, Place};
use crate::registry::{free_port, Registry};
use crate::sweep::methods::Order;
use crate::sweep::worker::ProxyAccess;

/// Bearer token the harness's proxies accept.
pub const TOKEN: &str = "starlight-bench";

/// Where the cloud services listen.
#[derive(Debug, Clone)]
pub struct CloudAddrs {
    /// The cloud host's address as the worker sees it.
    pub host: String,
    /// Registry TCP port.
    pub registry_port: u16,
}

/// One proxy of the cloud.
pub struct CloudProxy {
    /// The bundle order it serves.
    pub order: Order,
    /// How workers reach it.
    pub access: ProxyAccess,
    /// A client configuration naming it (`starlight ranks --config`).
    pub client_config: PathBuf,
    daemon: Daemon,
}

/// Registry plus proxies; stopped on drop (proxies first).
pub struct Cloud {
    /// The addresses.
    pub addrs: CloudAddrs,
    proxies: Vec<CloudProxy>,
    registry: Option<Registry>,
    place: Place,
}

impl Cloud {
    /// Starts the registry (storage `storage`) and one proxy per order of
    /// `orders` (databases and certificate under `dir`) in `place`,
    /// listening on `host`.
    pub fn start(
        place: &Place,
        host: &str,
        storage: &Path,
        dir: &Path,
        proxy_bin: &Path,
        orders: &[Order],
        send_window: u64,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let loopback = host.starts_with("127.");
        let registry_port = if loopback { free_port()? } else { 5000 };
        let reg_addr = format!("{host}:{registry_port}");
        let registry = Registry::start(
            storage,
            &if loopback {
                reg_addr.clone()
            } else {
                format!("0.0.0.0:{registry_port}")
            },
            &reg_addr,
            place,
            &dir.join("registry"),
        )?;
        let mut cloud = Cloud {
            addrs: CloudAddrs {
                host: host.to_string(),
                registry_port,
            },
            proxies: Vec::new(),
            registry: Some(registry),
            place: place.clone(),
        };
        if orders.is_empty() {
            return Ok(cloud);
        }
        let certs = dir.join("certs");
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
        for (i, order) in orders.iter().enumerate() {
            let port = if loopback {
                free_port()?
            } else {
                4433 + i as u16
            };
            let access = ProxyAccess {
                addr: format!("{host}:{port}"),
                server_name: host.to_string(),
                ca_file: certs.join("cert.pem"),
                token: TOKEN.to_string(),
            };
            let pdir = dir.join(format!("proxy-{}", order.name()));
            fs::create_dir_all(&pdir)?;
            let daemon = start_proxy(place, proxy_bin, &config, &access, &reg_addr, &pdir)?;
            let client_config = pdir.join("client.toml");
            fs::write(
                &client_config,
                format!(
                    "proxy = \"{}\"\nserver_name = \"{}\"\nca_file = \"{}\"\ntoken = \"{}\"\n",
                    access.addr,
                    access.server_name,
                    access.ca_file.display(),
                    access.token
                ),
            )?;
            cloud.proxies.push(CloudProxy {
                order: *order,
                access,
                client_config,
                daemon,
            });
        }
        Ok(cloud)
    }

    /// The proxy serving `order`.
    pub fn proxy(&self, order: Order) -> Result<&CloudProxy> {
        self.proxies
            .iter()
            .find(|p| p.order == order)
            .with_context(|| format!("no proxy for order {}", order.name()))
    }

    /// Every proxy.
    pub fn proxies(&self) -> &[CloudProxy] {
        &self.proxies
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

    /// Has `proxy` index `image` (and build its bundle once) by fetching it
    /// from inside the cloud namespace, so the timed runs measure
    /// provisioning, not first-time indexing.
    pub fn warm(
        &self,
        proxy: &ProxyAccess,
        starlight: &Path,
        image: &str,
        from: Option<&str>,
        scratch: &Path,
    ) -> Result<()> {
        let mut cmd = self.place.command(starlight);
        cmd.arg("fetch")
            .arg("--proxy")
            .arg(&proxy.addr)
            .arg("--ca")
            .arg(&proxy.ca_file)
            .arg("--token")
            .arg(&proxy.token);
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

/// Starts one `starlight-proxy serve` with its database and log in `dir`.
fn start_proxy(
    place: &Place,
    proxy_bin: &Path,
    config: &Path,
    access: &ProxyAccess,
    reg_addr: &str,
    dir: &Path,
) -> Result<Daemon> {
    let mut cmd = place.command(proxy_bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(&access.addr)
        .arg("--registry")
        .arg(reg_addr)
        .arg("--plain-http")
        .arg("--db")
        .arg(dir.join("db"))
        .arg("--cert")
        .arg(&access.ca_file)
        .arg("--key")
        .arg(access.ca_file.with_file_name("key.pem"))
        .arg("--token")
        .arg(&access.token)
        .env(
            "RUST_LOG",
            std::env::var("PROXY_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let out = dir.join("proxy.log");
    let mut daemon = Daemon::spawn("starlight-proxy", cmd, &out)?;
    daemon.wait_until(Duration::from_secs(30), || {
        fs::read_to_string(&out).is_ok_and(|t| t.contains("listening on"))
    })?;
    Ok(daemon)
}

impl Drop for Cloud {
    fn drop(&mut self) {
        for mut p in self.proxies.drain(..) {
            p.daemon.stop_within(Duration::from_secs(3));
        }
        if let Some(r) = self.registry.take() {
            r.stop();
        }
    }
}
