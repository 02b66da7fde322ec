#!/usr/bin/env bash
# The decode-step comparison for anyone with a GPU: GPT-B, L and XL with random weights, cuda
# against wgpu, batch 1, 8 and 16, 256 and 576 tokens (grid 16 and 24), CFG 4. Prints one
# Markdown table (and keeps every JSON line in $OUT_DIR/bench.jsonl).
#
#   scripts/gpu-bench.sh                       # the whole grid
#   CONFIGS=GPT-B GRIDS=4 BATCHES=1 BACKENDS=wgpu scripts/gpu-bench.sh   # a quick check
#
# Environment: CONFIGS, GRIDS, BATCHES, BACKENDS (space-separated), WARMUP (1), RUNS (1), FEATURES (cuda when BACKENDS has cuda), OUT_DIR,
# PROFILE (release; dev reuses a test build, as on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-"GPT-B GPT-L GPT-XL"}
GRIDS=${GRIDS:-"16 24"}
BATCHES=${BATCHES:-"1 8 16"}
BACKENDS=${BACKENDS:-"cuda wgpu"}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-1}
OUT_DIR=${OUT_DIR:-target/gpu-bench}
if [[ -z "${FEATURES:-}" ]]; then
  FEATURES=""
  [[ " $BACKENDS " == *" cuda "* ]] && FEATURES="cuda"
fi

mkdir -p "$OUT_DIR"
PROFILE=${PROFILE:-release}
echo "building llamagen ($PROFILE${FEATURES:+, features $FEATURES})" >&2
cargo build --profile "$PROFILE" -q -p llamagen ${FEATURES:+--features "$FEATURES"}
BIN=target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/llamagen
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true

: > "$OUT_DIR/bench.jsonl"
printf '| config | backend | batch | tokens | steps/s | tokens/s | launches/step | syncs/step | compiles after warm-up | autotunes after warm-up |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for config in $CONFIGS; do
  for grid in $GRIDS; do
    for batch in $BATCHES; do
      for backend in $BACKENDS; do
        line=$("$BIN" bench --config "$config" --grid "$grid" --batch "$batch" --cfg-scale 4 \
          --backend "$backend" --warmup "$WARMUP" --runs "$RUNS" --json 2>"$OUT_DIR/last.err") || {
          printf '| %s | %s | %s | %s | failed: %s |||||\n' "$config" "$backend" "$batch" "$((grid * grid))" \
            "$(tail -1 "$OUT_DIR/last.err" | tr '|' '/')"
          continue
        }
        echo "$line" >> "$OUT_DIR/bench.jsonl"
        python3 - "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
f = lambda v, d=1: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
print(f"| {r['config']} | {r['backend']} | {r['batch']} | {r['grid']**2} | {f(r['decode_steps_per_s'])} "
      f"| {f(r['tokens_per_s'])} | {f(r['kernel_launches_per_step'])} | {f(r['host_syncs_per_step'], 2)} "
      f"| {f(r['compilations_after_warmup'])} | {f(r['autotunes_after_warmup'])} |")
PY
      done
    done
  done
done
