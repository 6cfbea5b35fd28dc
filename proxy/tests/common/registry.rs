//! Starts a real `docker-registry` (CNCF distribution) on 127.0.0.1 with
//! storage in a temporary directory; stops it on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
}

/// User of [`TestRegistry::start_basic_auth`].
pub const AUTH_USER: &str = "tester";
/// Password of [`AUTH_USER`].
pub const AUTH_PASSWORD: &str = "starlight-pw";
/// bcrypt (cost 4) of [`AUTH_PASSWORD`] for [`AUTH_USER`].
const HTPASSWD: &str = "tester:$2b$04$QYA0vBp0Fn5EQ.YQzDxRv.nNdPkOHrBjw6P8zakwp5KIhXq1LbnY2\n";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// The HTTP status of `GET path` on `addr`, if the server answers.
pub fn http_status(addr: &str, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl TestRegistry {
    /// Starts a registry and waits (at most 20 s) until `/v2/` answers.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a registry that requires HTTP basic authentication as
    /// [`AUTH_USER`] / [`AUTH_PASSWORD`] (htpasswd), and waits until its
    /// `/v2/` answers 401.
    pub fn start_basic_auth() -> Self {
        Self::start_with(Some(HTPASSWD))
    }

    fn start_with(htpasswd: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let auth = match htpasswd {
            Some(lines) => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, lines).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: starlight-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}http:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt install docker-registry)");
        let reg = TestRegistry { child, addr, dir };
        let ready = if htpasswd.is_some() { 401 } else { 200 };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&reg.addr, "GET", "/v2/") != Some(ready) {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// The registry's storage directory (to corrupt blobs in tests).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of a blob's data file inside the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Whether `name:reference` (tag or digest) resolves to a manifest.
    pub fn has_manifest(&self, name: &str, reference: &str) -> bool {
        http_status(
            &self.addr,
            "HEAD",
            &format!("/v2/{name}/manifests/{reference}"),
        ) == Some(200)
    }

    /// The registry's log so far (for failing tests).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Directory holding the registry's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
