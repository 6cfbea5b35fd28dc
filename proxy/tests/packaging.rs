//! The proxy's packaging: the systemd unit and sample configuration in
//! `proxy/dist/`, and the Kubernetes Deployment + Service in
//! `deploy/kubernetes/starlight-proxy.yaml`. Each is parsed the way its consumer
//! parses it (systemd-analyze, the proxy's own config parser, a YAML parser) and
//! checked for consistency: the ports, paths and secrets one file names must be
//! the ones the others provide.
#![allow(clippy::unwrap_used)] // tests may unwrap

use starlight_proxy::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a multi-document YAML file.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The document of `kind` named `name`.
fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a Vec<Yaml> {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what} is not a list: {y:?}"))
}

/// The port of a `host:port` listen address.
fn port_of(listen: &str) -> i64 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen}"))
}

#[test]
fn the_sample_config_is_accepted_by_the_proxy() {
    let text = read("proxy/dist/proxy.toml");
    let config = Config::parse(&text).unwrap();
    // The database lives in the unit's StateDirectory.
    let unit = read("proxy/dist/starlight-proxy.service");
    assert!(unit.contains("StateDirectory=starlight-proxy\n"));
    assert!(
        config.db.starts_with("/var/lib/starlight-proxy"),
        "{:?}",
        config.db
    );
    // The key is the credential the unit loads, under the unit's credentials dir.
    let key = config.serve.key.clone().unwrap();
    assert_eq!(
        key,
        Path::new("/run/credentials/starlight-proxy.service/proxy.key")
    );
    assert!(unit.contains("LoadCredential=proxy.key:"));
    // No token in the sample: they come from the root-only environment file.
    assert!(config.serve.tokens.is_empty());
    assert!(unit.contains("EnvironmentFile=/etc/starlight/proxy.env"));
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/starlight-proxy serve --config /etc/starlight/proxy.toml"
    ));
    // Something the proxy refuses is refused (so the parse above meant something).
    assert!(Config::parse(&format!("{text}\nbogus_key = 1\n")).is_err());
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing (scripts/setup.sh installs systemd)");
    };
    assert!(out.status.success());
    // Verify the unit as installed, with ExecStart pointing at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let unit = read("proxy/dist/starlight-proxy.service").replace(
        "/usr/local/bin/starlight-proxy",
        env!("CARGO_BIN_EXE_starlight-proxy"),
    );
    let path = dir.path().join("starlight-proxy.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("starlight-proxy.service:"),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_kubernetes_manifests_are_consistent() {
    let docs = yaml_docs("deploy/kubernetes/starlight-proxy.yaml");
    let ns = "starlight";
    assert_eq!(
        find(&docs, "Namespace", ns)["kind"].as_str(),
        Some("Namespace")
    );
    for d in &docs {
        if d["kind"].as_str() != Some("Namespace") {
            assert_eq!(d["metadata"]["namespace"].as_str(), Some(ns), "{d:?}");
        }
    }

    // The configuration the container reads parses with the proxy's parser.
    let cm = find(&docs, "ConfigMap", "starlight-proxy-config");
    let config = Config::parse(str_of(&cm["data"]["proxy.toml"], "proxy.toml")).unwrap();
    let listen_port = port_of(&config.serve.listen);

    let deploy = find(&docs, "Deployment", "starlight-proxy");
    let spec = &deploy["spec"]["template"]["spec"];
    let containers = list(&spec["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = list(&c["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(args[0], "serve");
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .unwrap();

    // Every file the config names is mounted: the config itself, cert, key, db.
    let mounts = list(&c["volumeMounts"], "volumeMounts");
    let volumes = list(&spec["volumes"], "volumes");
    let mounted = |path: &Path| -> &Yaml {
        mounts
            .iter()
            .find(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
            .unwrap_or_else(|| panic!("{} is on no volume mount", path.display()))
    };
    let volume = |name: &str| -> &Yaml {
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let cfg_mount = mounted(Path::new(config_path));
    assert_eq!(cfg_mount["subPath"].as_str(), Some("proxy.toml"));
    let cfg_volume = volume(str_of(&cfg_mount["name"], "name"));
    assert_eq!(
        cfg_volume["configMap"]["name"].as_str(),
        Some("starlight-proxy-config")
    );
    for file in [
        config.serve.cert.clone().unwrap(),
        config.serve.key.clone().unwrap(),
    ] {
        let m = mounted(&file);
        let v = volume(str_of(&m["name"], "name"));
        assert!(
            v["secret"]["secretName"].as_str().is_some(),
            "{file:?} not from a Secret"
        );
        assert_eq!(m["readOnly"].as_bool(), Some(true));
    }
    let db = mounted(&config.db);
    assert!(
        db["readOnly"].as_bool() != Some(true),
        "the db must be writable"
    );

    // Tokens come from the Secret, under the variable the proxy reads.
    let env = list(&c["env"], "env");
    let tokens = env
        .iter()
        .find(|e| e["name"].as_str() == Some("STARLIGHT_PROXY_TOKENS"))
        .unwrap();
    let secret_ref = &tokens["valueFrom"]["secretKeyRef"];
    let secret = find(&docs, "Secret", str_of(&secret_ref["name"], "secret name"));
    assert!(secret["stringData"][str_of(&secret_ref["key"], "key")]
        .as_str()
        .is_some());
    assert!(config.serve.tokens.is_empty(), "no token in the ConfigMap");

    // The container port and the Service speak UDP on the listen port.
    let ports = list(&c["ports"], "ports");
    let quic = ports
        .iter()
        .find(|p| p["containerPort"].as_i64() == Some(listen_port))
        .unwrap_or_else(|| panic!("no container port {listen_port}"));
    assert_eq!(quic["protocol"].as_str(), Some("UDP"));
    let svc = find(&docs, "Service", "starlight-proxy");
    let svc_port = &list(&svc["spec"]["ports"], "service ports")[0];
    assert_eq!(svc_port["protocol"].as_str(), Some("UDP"));
    assert_eq!(svc_port["targetPort"].as_str(), quic["name"].as_str());
    // The selector picks the Deployment's pods.
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let selector = svc["spec"]["selector"].as_hash().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&labels[str_of(k, "label")], v);
    }
    // No privilege: the proxy needs none.
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
}
