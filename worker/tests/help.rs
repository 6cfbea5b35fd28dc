//! `starlightd --help` and every subcommand's read like man pages: a
//! description, every option and argument documented, examples.
#![allow(clippy::unwrap_used)]

#[path = "../../proxy/tests/help_support/mod.rs"]
mod help_support;

#[test]
fn every_command_has_a_man_style_help() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_starlightd"));
    let checked = help_support::check_all(bin, "starlightd");
    assert!(
        checked.contains(&"starlightd run".to_string()),
        "run not checked: {checked:?}"
    );
}
