//! The starlightd DaemonSet (`deploy/kubernetes/starlightd-daemonset.yaml`):
//! its `starlightd.toml` is accepted by starlightd's own settings parser and
//! names the proxy by its cluster DNS name, and its containerd snippet turns
//! on the snapshot annotations remote-snapshotter pulls need.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;

use starlight_worker::config::Settings;
use yaml_rust2::{Yaml, YamlLoader};

fn config_map() -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/starlightd-daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    docs.into_iter()
        .find(|d| {
            d["kind"].as_str() == Some("ConfigMap")
                && d["metadata"]["name"].as_str() == Some("starlightd-config")
        })
        .expect("ConfigMap starlightd-config")
}

#[test]
fn the_daemonset_config_is_accepted_by_starlightd() {
    let cm = config_map();
    let toml_text = cm["data"]["starlightd.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("starlightd.toml");
    std::fs::write(&file, toml_text).unwrap();
    let settings = Settings::load(&file, true).unwrap();
    let proxy = settings.proxy.as_ref().expect("a proxy address");
    assert_eq!(proxy.host(), "starlight-proxy.starlight.svc.cluster.local");
    assert_eq!(proxy.port(), 4433);
    assert_eq!(settings.namespace.as_deref(), Some("k8s.io"));

    let snippet: toml::Value = cm["data"]["containerd-snippet.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cri = &snippet["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
    assert_eq!(cri["snapshotter"].as_str(), Some("starlight"));
    assert_eq!(cri["disable_snapshot_annotations"].as_bool(), Some(false));
    assert_eq!(
        snippet["proxy_plugins"]["starlight"]["address"].as_str(),
        settings
            .snapshotter_socket
            .as_ref()
            .and_then(|p| p.to_str())
    );
}
