//! `starlight-proxy --help` and every subcommand's read like man pages:
//! a description, every option and argument documented, examples.
#![allow(clippy::unwrap_used)]

mod help_support;

#[test]
fn every_command_has_a_man_style_help() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_starlight-proxy"));
    let checked = help_support::check_all(bin, "starlight-proxy");
    for sub in ["index", "toc", "serve", "gen-cert"] {
        assert!(
            checked.contains(&format!("starlight-proxy {sub}")),
            "{sub} not checked: {checked:?}"
        );
    }
}

#[test]
fn the_checker_finds_an_undocumented_flag() {
    let text = "Does things well enough\n\nUsage: x [OPTIONS]\n\nOptions:\n      --bare\n      --doc <V>\n          Documented\n\nExamples:\n  x --doc 1\n";
    let p = help_support::problems("x", text, true);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("--bare"), "{p:?}");
    assert!(!help_support::problems("x", "Usage: x\n", true).is_empty());
}
