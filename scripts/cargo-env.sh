# Sourced by the scripts: puts rustup's cargo on PATH. Under sudo, falls back
# to the invoking user's rustup installation.
if ! command -v cargo >/dev/null 2>&1; then
    for _home in "$HOME" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)"}; do
        if [[ -x $_home/.cargo/bin/cargo ]]; then
            export CARGO_HOME=${CARGO_HOME:-$_home/.cargo}
            export RUSTUP_HOME=${RUSTUP_HOME:-$_home/.rustup}
            export PATH=$CARGO_HOME/bin:$PATH
            break
        fi
    done
    unset _home
fi
