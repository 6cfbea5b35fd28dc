//! `starlight --help` and every subcommand's read like man pages: a
//! description, every option and argument documented, examples.
#![allow(clippy::unwrap_used)]

#[path = "../../proxy/tests/help_support/mod.rs"]
mod help_support;

#[test]
fn every_command_has_a_man_style_help() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_starlight"));
    let checked = help_support::check_all(bin, "starlight");
    for sub in [
        "convert", "fetch", "pull", "images", "rm", "rpull", "trace", "ranks", "gc", "status",
    ] {
        assert!(
            checked.contains(&format!("starlight {sub}")),
            "{sub} not checked: {checked:?}"
        );
    }
}

#[test]
fn rpull_takes_registry_credentials_like_ctr_pull() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_starlight"));
    let text = help_support::help(bin, &["rpull"]);
    for needle in [
        "--user <USER[:PASSWORD]>",
        "-u,",
        "standard input",
        "config.json",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    // An empty user name is refused before anything is contacted.
    let out = std::process::Command::new(bin)
        .args(["rpull", "--user", ":pw", "127.0.0.1:9/app:v1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--user needs a user name"), "{err}");
}
