//! A private registry (docker-registry with htpasswd basic authentication):
//! the proxy presents the credentials of its `[[registry.auth]]` entry to
//! resolve, index and range-read the image, and a worker's bundle verifies;
//! without credentials the worker gets a clear refusal and nothing is
//! indexed. Also the `starlight-proxy index` command with a config file.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::registry::{TestRegistry, AUTH_PASSWORD, AUTH_USER};
use serve_support::*;
use starlight_proxy::credentials::{AuthEntry, Credentials};
use starlight_proxy::format::Compression;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::serve::ServeOptions;
use transport_quic::quic::ClientError;

fn files() -> Vec<(String, Vec<u8>)> {
    (0..6)
        .map(|i| (format!("app/f{i}"), noise(i, 3000 + 700 * i as usize)))
        .collect()
}

/// A private image pushed with the test credentials; returns its digest.
fn push_private(reg: &TestRegistry) -> String {
    let layer = starlight_layer(&tar_of(&files(), 1_700_000_000), Compression::Gzip);
    let creds = format!("{AUTH_USER}:{AUTH_PASSWORD}");
    push_image_as(reg, "private/app", "v1", &[layer], Some(&creds))
}

/// The password in a 0600 file; returns the `[[registry.auth]]` entry.
fn auth_entry(dir: &std::path::Path, host: &str) -> AuthEntry {
    let file = dir.join("registry.password");
    std::fs::write(&file, format!("{AUTH_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    AuthEntry {
        host: host.to_string(),
        username: Some(AUTH_USER.to_string()),
        password_file: Some(file),
        token_file: None,
    }
}

#[tokio::test]
async fn bundles_of_a_private_registry_use_the_proxys_credentials() {
    let reg = TestRegistry::start_basic_auth();
    let digest = push_private(&reg);
    let dir = tempfile::tempdir().unwrap();
    // An empty docker config: nothing but the explicit entry can authorize.
    let empty = dir.path().join("config.json");
    std::fs::write(&empty, "{}").unwrap();

    // Without credentials: a clear refusal, nothing indexed.
    let anonymous = Credentials::load(&[], Some(empty.clone())).unwrap();
    let proxy = Proxy::start_with(
        &reg,
        ServeOptions::default(),
        RegistryClient::new(true).with_credentials(anonymous),
    );
    let err = fetch(&proxy.client(), proxy.addr, &request("private/app:v1", &[]))
        .await
        .err()
        .expect("an anonymous proxy cannot read a private image");
    assert!(matches!(err, ClientError::Proxy(_)), "{err}");
    assert_eq!(proxy.handler.stats().indexed, 0);
    // The upstream body stays out of what the worker sees.
    assert!(!err.to_string().contains("UNAUTHORIZED"), "{err}");

    // With the entry: the bundle arrives whole and verifies.
    let entry = auth_entry(dir.path(), &reg.addr);
    let creds = Credentials::load(&[entry], Some(empty)).unwrap();
    assert_eq!(creds.hosts().collect::<Vec<_>>(), vec![reg.addr.as_str()]);
    let proxy = Proxy::start_with(
        &reg,
        ServeOptions::default(),
        RegistryClient::new(true).with_credentials(creds),
    );
    let bundle = fetch(&proxy.client(), proxy.addr, &request("private/app:v1", &[]))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    verify(&bundle).unwrap();
    assert_eq!(bundle.header.manifest_digest, digest);
    assert_eq!(bundle.payloads.len(), files().len());
}

#[test]
fn index_command_reads_registry_auth_from_the_config() {
    let reg = TestRegistry::start_basic_auth();
    let digest = push_private(&reg);
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(docker.join("config.json"), "{}").unwrap();
    let entry = auth_entry(dir.path(), &reg.addr);
    let write_config = |name: &str, with_auth: bool| {
        let mut text = format!(
            "db = \"{}\"\n[registry]\nurl = \"{}\"\nplain_http = true\ndocker_config = \"{}\"\n",
            dir.path().join(format!("db-{name}")).display(),
            reg.addr,
            docker.join("config.json").display()
        );
        if with_auth {
            text.push_str(&format!(
                "[[registry.auth]]\nhost = \"{}\"\nusername = \"{AUTH_USER}\"\npassword_file = \"{}\"\n",
                reg.addr,
                entry.password_file.as_ref().unwrap().display()
            ));
        }
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let index = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_starlight-proxy"))
            .env("DOCKER_CONFIG", &docker)
            .arg("index")
            .arg("--config")
            .arg(config)
            .arg("private/app:v1")
            .output()
            .unwrap()
    };

    let out = index(&write_config("anonymous", false));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "indexed without credentials");
    assert!(stderr.contains("private/app"), "{stderr}");

    let out = index(&write_config("private", true));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", reg.log());
    assert!(stdout.contains(&digest), "{stdout}");

    // A malformed entry is refused at start with a message naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[registry]\nurl = \"{}\"\n[[registry.auth]]\nhost = \"{}\"\nusername = \"{AUTH_USER}\"\n",
            reg.addr, reg.addr
        ),
    )
    .unwrap();
    let out = index(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("registry.auth"), "{stderr}");
}
