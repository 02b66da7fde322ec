#!/usr/bin/env bash
# Soaks: does a long-running studio worker or `generate` run hold its memory?
#
#   bash scripts/soak.sh [JOBS] [IMAGES]     # defaults: 1000 worker jobs, 2000 images
#
# 1. The studio's worker without a window (app/examples/worker_soak.rs): JOBS small generations
#    with the bundled demo model, cancels, reloads and prefix re-rolls mixed in; resident memory
#    every 100 jobs.
# 2. One `llamagen generate --num IMAGES --out-dir` process on the CPU: its resident memory
#    (VmRSS) sampled every second against the number of images written so far.
# Both print their curve and the ratio of the last figure to the one after the first tenth.
# The figures are in docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${1:-1000}"
images="${2:-2000}"

cargo build --workspace --bin llamagen --example worker_soak
echo "== worker: $jobs jobs"
target/debug/examples/worker_soak --jobs "$jobs" --every $((jobs / 10))

echo "== generate --num $images --out-dir"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
target/debug/llamagen generate --class star --num "$images" --batch-size 16 --backend cpu \
    --out-dir "$out/images" >/dev/null 2>"$out/stderr" &
pid=$!
first=""
last=""
step=$((images / 10))
next=$step
while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    # (the folder appears with the first batch: until then, nothing made)
    made=$( (find "$out/images" -name '*.png' 2>/dev/null || true) | wc -l)
    if [ -n "$rss" ] && [ "$made" -ge "$next" ]; then
        printf 'images %5d: resident %.1f MB\n' "$made" "$(echo "$rss / 1000" | bc -l)"
        [ -z "$first" ] && first=$rss
        last=$rss
        next=$((next + step))
    fi
    sleep 1
done
wait "$pid" || { cat "$out/stderr" >&2; exit 1; }
if [ -n "$first" ]; then
    printf 'resident memory, last sample / first: %.3f\n' "$(echo "$last / $first" | bc -l)"
fi
