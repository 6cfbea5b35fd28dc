//! Tests of the configuration.
#![allow(clippy::unwrap_used)]
use super::*;
use std::path::Path;

#[test]
fn file_then_flags_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("starlightd.toml");
    std::fs::write(
        &path,
        "proxy = \"127.0.0.1:8443\"\nca_file = \"/etc/ca.pem\"\ntoken = \"file\"\ngrace_secs = 5\n",
    )
    .unwrap();
    let file = Settings::load(&path, true).unwrap();
    let flags = Settings {
        token: Some("flag".into()),
        state_dir: Some("/tmp/state".into()),
        ..Settings::default()
    };
    let config = file.overridden_by(flags).resolve().unwrap();
    assert_eq!(config.proxy, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(config.server_name, "127.0.0.1");
    assert_eq!(config.ca_file, PathBuf::from("/etc/ca.pem"));
    assert_eq!(config.token, "flag");
    assert_eq!(config.state_dir, PathBuf::from("/tmp/state"));
    assert_eq!(config.grace, Duration::from_secs(5));
    assert_eq!(config.store_dir(), PathBuf::from("/tmp/state/content"));
}

#[test]
fn the_reconnect_backoff_defaults_and_is_bounded() {
    let base = || Settings {
        proxy: Some("127.0.0.1:8443".parse().unwrap()),
        ca_file: Some("/etc/ca.pem".into()),
        token: Some("t".into()),
        ..Settings::default()
    };
    assert_eq!(base().resolve().unwrap().backoff, Backoff::default());
    let set = |initial, max| Settings {
        reconnect_initial_ms: initial,
        reconnect_max_ms: max,
        ..base()
    };
    let b = set(Some(50), Some(800)).resolve().unwrap().backoff;
    assert_eq!(
        (b.initial, b.max),
        (Duration::from_millis(50), Duration::from_millis(800))
    );
    // An initial wait above the default bound raises the bound with it.
    let b = set(Some(8000), None).resolve().unwrap().backoff;
    assert_eq!(b.max, Duration::from_millis(8000));
    for (initial, max) in [
        (Some(0), None),
        (Some(900), Some(800)),
        (None, Some(MAX_RECONNECT_MS + 1)),
        (Some(MAX_RECONNECT_MS + 1), None),
    ] {
        assert!(
            matches!(set(initial, max).resolve(), Err(ConfigError::Reconnect(_))),
            "{initial:?} {max:?} accepted"
        );
    }
}

#[test]
fn the_traces_table_is_bounded_and_defaults_on() {
    let base = "proxy = \"127.0.0.1:8443\"\nca_file = \"/c\"\ntoken = \"t\"\n";
    let parse = |extra: &str| {
        toml::from_str::<Settings>(&format!("{base}{extra}"))
            .map_err(|e| e.to_string())
            .and_then(|s| s.resolve().map_err(|e| e.to_string()))
    };
    let d = parse("").unwrap();
    assert_eq!(d.traces, TraceConfig::default());
    assert!(d.traces.enabled);
    assert_eq!(d.traces_dir(), PathBuf::from("/var/lib/starlight/traces"));
    let c = parse(
        "[traces]\nenabled = false\nwindow_secs = 5\nmax_records = 10\nupload_interval_ms = 50\n",
    )
    .unwrap();
    assert!(!c.traces.enabled);
    assert_eq!(c.traces.window, Duration::from_secs(5));
    assert_eq!(c.traces.max_records, 10);
    assert_eq!(c.traces.upload_interval, Duration::from_millis(50));
    for bad in [
        "window_secs = 0",
        "window_secs = 100000",
        "max_records = 0",
        "max_bytes = 99999999999",
        "upload_interval_ms = 1",
        "max_spooled = 0",
    ] {
        let e = parse(&format!("[traces]\n{bad}\n")).unwrap_err();
        assert!(e.contains("[traces]"), "{bad}: {e}");
    }
    assert!(parse("[traces]\nunknown = 1\n").is_err());
}

#[test]
fn the_shipped_example_parses_completely() {
    let example: Settings = toml::from_str(include_str!("../dist/starlightd.toml")).unwrap();
    let config = example.resolve().unwrap();
    assert_eq!(config.server_name, "localhost");
    assert_eq!(config.grace, Duration::from_secs(30));
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/starlight"));
    assert_eq!(config.namespace, "default");
    assert_eq!(
        config.api_socket,
        PathBuf::from("/run/starlight/starlightd.sock")
    );
    assert_eq!(
        config.snapshotter_socket,
        PathBuf::from("/run/starlight/snapshotter.sock")
    );
    assert_eq!(
        config.containerd_socket,
        PathBuf::from("/run/containerd/containerd.sock")
    );
}

#[test]
fn the_token_comes_from_the_file_setting_or_a_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-file\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = Settings {
        proxy: Some("127.0.0.1:1".parse().unwrap()),
        ca_file: Some("/ca.pem".into()),
        ..Settings::default()
    };
    let with_file = Settings {
        token_file: Some(token_file.clone()),
        ..base.clone()
    };
    assert_eq!(with_file.clone().resolve().unwrap().token, "from-file");
    // A flag's token replaces the file's token_file, and the other way.
    let flag = Settings {
        token: Some("flag".into()),
        ..Settings::default()
    };
    assert_eq!(
        with_file.overridden_by(flag).resolve().unwrap().token,
        "flag"
    );
    let both = Settings {
        token: Some("a".into()),
        token_file: Some(token_file),
        ..base.clone()
    };
    assert!(matches!(
        both.resolve(),
        Err(ConfigError::Settings(SettingsError::TwoTokens))
    ));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let err = Settings {
        token_file: Some(empty),
        ..base
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn the_state_dir_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Settings {
        proxy: Some("127.0.0.1:1".parse().unwrap()),
        ca_file: Some("/ca.pem".into()),
        token: Some("t".into()),
        state_dir: Some(dir.path().join("state")),
        ..Settings::default()
    }
    .resolve()
    .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    config.prepare_state_dir().unwrap();
    assert_eq!(mode(&config.state_dir), 0o700);
    // An older, open state directory and its subdirectories are closed.
    std::fs::create_dir_all(config.images_db()).unwrap();
    for d in [config.state_dir.clone(), config.images_db()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    config.prepare_state_dir().unwrap();
    assert_eq!(mode(&config.state_dir), 0o700);
    assert_eq!(mode(&config.images_db()), 0o700);
    // A symlink is refused.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&config.state_dir, &link).unwrap();
    config.state_dir = link;
    let err = config.prepare_state_dir().unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn missing_bad_and_unknown_settings_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.toml");
    assert_eq!(Settings::load(&absent, false).unwrap(), Settings::default());
    assert!(matches!(
        Settings::load(&absent, true),
        Err(SettingsError::Read { .. })
    ));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "proxy = \"127.0.0.1:1\"\nproxi = 3\n").unwrap();
    let err = Settings::load(&bad, true).unwrap_err();
    assert!(err.to_string().contains("proxi"), "{err}");
    let err = Settings::default().resolve().unwrap_err();
    assert_eq!(
        err.to_string(),
        "no proxy address configured (set it in the configuration file or with its flag)"
    );
}

#[test]
fn the_proxy_may_be_a_name_and_the_store_bounded() {
    let base = "ca_file = \"/c\"\ntoken = \"t\"\n";
    let parse = |extra: &str| {
        toml::from_str::<Settings>(&format!("{base}{extra}"))
            .map_err(|e| e.to_string())
            .and_then(|s| s.resolve().map_err(|e| e.to_string()))
    };
    let c = parse("proxy = \"localhost:8443\"\n").unwrap();
    assert_eq!(c.proxy.host(), "localhost");
    assert_eq!(c.server_name, "localhost");
    assert_eq!(c.gc, GcConfig::default());
    let c = parse(
        "proxy = \"proxy.example:1\"\nserver_name = \"other\"\nmax_store_bytes = 50000000\n\
         gc_unused_secs = 3600\ngc_interval_secs = 5\n",
    )
    .unwrap();
    assert_eq!(c.server_name, "other");
    assert_eq!(c.gc.max_store_bytes, Some(50_000_000));
    assert_eq!(c.gc.unused, Some(Duration::from_secs(3600)));
    assert_eq!(c.gc.interval, Duration::from_secs(5));
    for bad in [
        "proxy = \"no-port\"\n",
        "proxy = \"a b:1\"\n",
        "proxy = \"p:1\"\nmax_store_bytes = 10\n",
        "proxy = \"p:1\"\ngc_unused_secs = 0\n",
        "proxy = \"p:1\"\ngc_interval_secs = 0\n",
    ] {
        assert!(parse(bad).is_err(), "{bad} accepted");
    }
}
