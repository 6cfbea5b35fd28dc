#!/usr/bin/env bash
# Starlight's test suite: installs what is missing (scripts/setup.sh), builds
# every crate and target, and runs every test. Run as root (sudo
# scripts/test.sh): the end-to-end tests start containerd and mount
# snapshots; without root they are skipped with a message, and setup is
# skipped too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    (%ds)\n' $((SECONDS - $1)); }

if [[ $(id -u) -eq 0 ]]; then
    step "Checking and installing dependencies"
    t=$SECONDS
    "$ROOT/scripts/setup.sh"
    elapsed "$t"
else
    echo "warning: not root: skipping scripts/setup.sh; tests that need root (containerd) will skip" >&2
fi
# shellcheck source=scripts/cargo-env.sh
source "$ROOT/scripts/cargo-env.sh"

step "cargo build --workspace --all-targets"
t=$SECONDS
cargo build --workspace --all-targets
elapsed "$t"

# Tests that need root (containerd, FUSE mounts, namespaces) are marked
# #[ignore = "needs root: ..."], so that `cargo test` as another user reports
# them as ignored instead of passed. As root this script runs them too, and
# lists them first. The only ignored tests it leaves out are measurements
# (`measure_*`: they print numbers and assert nothing; bench/ runs them).
ignored=()
if [[ $(id -u) -eq 0 ]]; then
    ignored=(--include-ignored --skip measure_)
    step "ignored tests run as root"
    cargo test --workspace -q -- --list --ignored 2>/dev/null | grep ': test$' | grep -v measure_ | sed 's/: test$//;s/^/    /' || true
fi

step "cargo test --workspace --no-fail-fast"
t=$SECONDS
cargo test --workspace --no-fail-fast -- "${ignored[@]}" --test-threads="${TEST_THREADS:-2}"
elapsed "$t"

step "All tests passed"
