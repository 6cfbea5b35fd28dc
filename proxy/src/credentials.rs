//! Credentials the proxy presents to private registries.
//!
//! Only the proxy talks to the registry, so only the proxy holds registry
//! credentials; workers authenticate to the proxy with their own tokens and
//! never see them. For each registry host, in order:
//!
//! 1. an entry of the config's `[[registry.auth]]` list (`host`, then
//!    `username` + `password_file`, or `token_file` for a bearer identity
//!    token);
//! 2. docker's `config.json` (`[registry] docker_config`, or `$DOCKER_CONFIG`
//!    / `~/.docker/config.json`): `auths` entries, `credHelpers` and
//!    `credsStore` credential helpers (`docker-credential-NAME` in `PATH`);
//! 3. anonymous access.
//!
//! Secret files are read once at start, must be at most [`MAX_SECRET_BYTES`],
//! and a warning is logged when other users may read them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Largest password or token file, bytes.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// One `[[registry.auth]]` entry, as the config gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthEntry {
    /// Registry host (`HOST[:PORT]`), as in image references.
    pub host: String,
    /// User name for HTTP basic authentication (with `password_file`).
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// File holding a bearer identity token (instead of a user and password).
    pub token_file: Option<PathBuf>,
}

/// Errors loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// An entry is incomplete or contradictory.
    #[error("[[registry.auth]] entry for {host:?}: {reason}")]
    Entry {
        /// The entry's host.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret file cannot be used.
    #[error("registry credential file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The credentials of every configured registry.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: HashMap<String, RegistryAuth>,
    docker_config: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Credentials")
            .field("hosts", &self.entries.keys().collect::<Vec<_>>())
            .field("docker_config", &self.docker_config)
            .finish()
    }
}

/// Reads a secret file: bounded, trimmed, not empty.
fn read_secret(path: &Path) -> Result<String, CredentialError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: String| CredentialError::File {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(err(format!("larger than {MAX_SECRET_BYTES} bytes")));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "a registry credential file is readable by other users: chmod 600 it");
    }
    let mut text = String::new();
    file.take(MAX_SECRET_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(err("empty".into()));
    }
    if secret.contains(['\n', '\r', '\0']) {
        return Err(err("more than one line".into()));
    }
    Ok(secret.to_string())
}

impl Credentials {
    /// Loads `entries` (reading their secret files now) and remembers
    /// `docker_config` (a `config.json` file; none: docker's default place).
    pub fn load(
        entries: &[AuthEntry],
        docker_config: Option<PathBuf>,
    ) -> Result<Credentials, CredentialError> {
        let mut out = HashMap::new();
        for e in entries {
            let bad = |reason: &str| CredentialError::Entry {
                host: e.host.clone(),
                reason: reason.to_string(),
            };
            let host = e.host.trim();
            if host.is_empty()
                || host.len() > 255
                || host.contains(['/', ' ', '@'])
                || host.contains("://")
            {
                return Err(bad("host must be HOST[:PORT], as in image references"));
            }
            let auth = match (&e.username, &e.password_file, &e.token_file) {
                (Some(user), Some(pw), None) => {
                    if user.is_empty() || user.contains(':') {
                        return Err(bad("username must be non-empty and without ':'"));
                    }
                    RegistryAuth::Basic(user.clone(), read_secret(pw)?)
                }
                (None, None, Some(token)) => RegistryAuth::Bearer(read_secret(token)?),
                _ => return Err(bad("give username and password_file, or token_file alone")),
            };
            if out.insert(host.to_string(), auth).is_some() {
                return Err(bad("the host is listed twice"));
            }
        }
        if let Some(path) = &docker_config {
            if !path.is_file() {
                return Err(CredentialError::File {
                    path: path.clone(),
                    reason: "docker_config must name an existing config.json".into(),
                });
            }
        }
        Ok(Credentials {
            entries: out,
            docker_config,
        })
    }

    /// These credentials with `user` and `password` (HTTP basic
    /// authentication) for `host`, before any other source: a user's
    /// `--user` on the command line.
    pub fn with_basic(mut self, host: &str, user: &str, password: &str) -> Credentials {
        self.entries.insert(
            host.to_string(),
            RegistryAuth::Basic(user.to_string(), password.to_string()),
        );
        self
    }

    /// Registry hosts with a configured entry.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The credentials for `registry` (a host as in image references).
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        if let Some(auth) = self.entries.get(registry) {
            return auth.clone();
        }
        let server = match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
                "https://index.docker.io/v1/"
            }
            other => other,
        };
        let found = match &self.docker_config {
            Some(path) => std::fs::File::open(path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    docker_credential::get_credential_from_reader(
                        std::io::BufReader::new(f),
                        server,
                    )
                    .map_err(|e| format!("{e:?}"))
                }),
            None => docker_credential::get_credential(server).map_err(|e| format!("{e:?}")),
        };
        match found {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
                RegistryAuth::Basic(u, p)
            }
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
            Err(e) => {
                tracing::debug!(registry, error = %e, "no registry credentials; anonymous access");
                RegistryAuth::Anonymous
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn entries_then_docker_config_then_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let pw = secret(dir.path(), "pw", "s3cret\n");
        let tok = secret(dir.path(), "tok", "tok-123");
        let docker = secret(
            dir.path(),
            "config.json",
            // "alice:wonder" in base64.
            r#"{"auths":{"other:5000":{"auth":"YWxpY2U6d29uZGVy"}}}"#,
        );
        let c = Credentials::load(
            &[
                AuthEntry {
                    host: "reg:5000".into(),
                    username: Some("bob".into()),
                    password_file: Some(pw),
                    token_file: None,
                },
                AuthEntry {
                    host: "ghcr.example".into(),
                    token_file: Some(tok),
                    ..AuthEntry::default()
                },
            ],
            Some(docker),
        )
        .unwrap();
        assert_eq!(
            c.for_registry("reg:5000"),
            RegistryAuth::Basic("bob".into(), "s3cret".into())
        );
        assert_eq!(
            c.for_registry("ghcr.example"),
            RegistryAuth::Bearer("tok-123".into())
        );
        assert_eq!(
            c.for_registry("other:5000"),
            RegistryAuth::Basic("alice".into(), "wonder".into())
        );
        assert_eq!(c.for_registry("nobody:1"), RegistryAuth::Anonymous);
        // The secrets never show in logs.
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("tok-123"),
            "{shown}"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pw = secret(dir.path(), "pw", "x");
        let empty = secret(dir.path(), "empty", " \n");
        let two = secret(dir.path(), "two", "a\nb\n");
        let big = secret(dir.path(), "big", &"x".repeat(70_000));
        let entry =
            |host: &str, user: Option<&str>, pw: Option<&PathBuf>, tok: Option<&PathBuf>| {
                AuthEntry {
                    host: host.into(),
                    username: user.map(str::to_string),
                    password_file: pw.cloned(),
                    token_file: tok.cloned(),
                }
            };
        let cases = [
            vec![entry("", Some("u"), Some(&pw), None)],
            vec![entry("http://reg", Some("u"), Some(&pw), None)],
            vec![entry("reg/x", Some("u"), Some(&pw), None)],
            vec![entry("reg", Some("u"), None, None)],
            vec![entry("reg", None, Some(&pw), None)],
            vec![entry("reg", Some("u"), Some(&pw), Some(&pw))],
            vec![entry("reg", Some("a:b"), Some(&pw), None)],
            vec![entry("reg", Some("u"), Some(&empty), None)],
            vec![entry("reg", Some("u"), Some(&two), None)],
            vec![entry("reg", None, None, Some(&big))],
            vec![entry("reg", None, None, Some(&dir.path().join("missing")))],
            vec![
                entry("reg", Some("u"), Some(&pw), None),
                entry("reg", Some("v"), Some(&pw), None),
            ],
        ];
        for c in cases {
            let e = Credentials::load(&c, None).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        let e = Credentials::load(&[], Some(dir.path().join("nope.json"))).unwrap_err();
        assert!(e.to_string().contains("docker_config"), "{e}");
    }
}
