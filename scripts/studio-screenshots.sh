#!/usr/bin/env bash
# Screenshots of the studio in a virtual X display (Xvfb), drawn with Mesa's software Vulkan
# (lavapipe): one while an image is being generated, one when it is finished.
#
#   apt install xvfb xdotool imagemagick mesa-vulkan-drivers libvulkan1
#   bash scripts/studio-screenshots.sh [OUT_DIR]
#
# The studio starts on the bundled demo model with fresh settings (four images of the first
# class), or on the model STUDIO_ARGS names (`STUDIO_ARGS="--gpt-ckpt c2i_B_256.pt --vq-ckpt
# vq_ds16_c2i.pt"`); the script presses Generate. The models run on wgpu too (`--backend wgpu`: on lavapipe here,
# slow enough to catch the image half made, and the window draws with burn's own device).
set -euo pipefail
out="${1:-target/studio-screenshots}"
mkdir -p "$out"
# The workspace build (dependencies and our crates are optimised in the dev profile too).
cargo build --workspace --bin llamagen-studio
bin="$(pwd)/target/debug/llamagen-studio"

display=":97"
Xvfb "$display" -screen 0 1280x820x24 >/dev/null 2>&1 &
xvfb=$!
home="$(mktemp -d)"
cleanup() { kill "$studio" "$xvfb" 2>/dev/null || true; rm -rf "$home"; }
trap cleanup EXIT
# Wait until the display answers (a second is not always enough on a busy machine).
for _ in $(seq 30); do
    if DISPLAY="$display" xdotool getdisplaygeometry >/dev/null 2>&1; then break; fi
    sleep 0.5
done

# A fresh settings folder, so the run starts from the defaults.
DISPLAY="$display" HOME="$home" XDG_DATA_HOME="$home" WAYLAND_DISPLAY= \
    "$bin" --backend "${BACKEND:-wgpu}" ${STUDIO_ARGS:-} >"$out/studio.log" 2>&1 &
studio=$!
for _ in $(seq 60); do
    if DISPLAY="$display" xdotool search --name "LlamaGen studio" >/dev/null 2>&1; then break; fi
    sleep 1
done
win="$(DISPLAY="$display" xdotool search --name "LlamaGen studio" | head -1)"
sleep "${LOAD_SECONDS:-4}" # the model loads (the demo: 4 s)
DISPLAY="$display" import -window root "$out/studio-ready.png"

# Press Generate (top left). No window manager runs here to give keyboard focus for Ctrl+Enter.
DISPLAY="$display" xdotool mousemove --window "$win" 38 11 click 1
sleep "${MID_SECONDS:-1.5}"
DISPLAY="$display" import -window root "$out/studio-generating.png"
sleep "${END_SECONDS:-75}"
DISPLAY="$display" import -window root "$out/studio-finished.png"
echo "screenshots in $out"
