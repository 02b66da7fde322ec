#!/usr/bin/env bash
# The project's test command: sets up what the tests need on a fresh Debian/Ubuntu machine, then
# runs every test of the workspace. Extra arguments go to `cargo test` (a filter, `-- --nocapture`).
#
#   bash scripts/test.sh
#
# The wgpu tests need a Vulkan driver. Without a GPU, Mesa's software one (lavapipe) runs them;
# it is installed here when missing (apt-get, through sudo when not root). Elsewhere (macOS,
# Windows, another Linux) install a Vulkan/Metal/DX12 driver yourself; the tests are then the
# same `cargo test --workspace`. CI (`.ci/run`) calls this script, so the two cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."

need_vulkan() {
    command -v dpkg >/dev/null 2>&1 || return 1
    ! dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1
}

if need_vulkan; then
    echo "scripts/test.sh: installing Mesa's Vulkan driver for the wgpu tests (mesa-vulkan-drivers libvulkan1)" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            echo "scripts/test.sh: not root and no sudo: run 'apt-get install mesa-vulkan-drivers libvulkan1' as root, then this script again" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q || true
    $sudo apt-get install -y -q --no-install-recommends mesa-vulkan-drivers libvulkan1
fi

# Without a desktop session, libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set"
# whenever a test starts a wgpu instance (the `llamagen` binaries set it up themselves, the test
# harnesses' own renderers do not): a private empty folder keeps that noise out of the output.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"
    export XDG_RUNTIME_DIR
fi

exec cargo test --workspace "$@"
