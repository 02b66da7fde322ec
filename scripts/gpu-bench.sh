#!/usr/bin/env bash
# The decode-step comparison for anyone with a GPU: GPT-B, L and XL with random weights, cuda
# against wgpu, batch 1, 8 and 16, 256 and 576 tokens (grid 16 and 24), CFG 4. Prints one
# Markdown table (and keeps every JSON line in $OUT_DIR/bench.jsonl).
#
#   scripts/gpu-bench.sh                       # the whole grid
#   CONFIGS=GPT-B GRIDS=4 BATCHES=1 BACKENDS=wgpu scripts/gpu-bench.sh   # a quick check
#
# Environment: CONFIGS, GRIDS, BATCHES, BACKENDS (space-separated), WARMUP (1), RUNS (1), FEATURES (cuda when BACKENDS has cuda), OUT_DIR,
# PROFILE (release; dev reuses a test build, as on a machine without a GPU), BIN (a llamagen
# binary built elsewhere: nothing is built), CHECK (1: first generate the bundled demo greedily on
# every backend and compare the tokens with the CPU's; 0 skips it), PRECISIONS ("f32"; bf16 is
# skipped on wgpu), COUNTS (1: kernel launches and syncs per step from CubeCL's loggers; the
# launch logger costs host time on every launch, so COUNTS=0 is the setting for steps/s),
# STEP_TIMEOUT (seconds one bench run may take; none by default).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-"GPT-B GPT-L GPT-XL"}
GRIDS=${GRIDS:-"16 24"}
BATCHES=${BATCHES:-"1 8 16"}
BACKENDS=${BACKENDS:-"cuda wgpu"}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-1}
PRECISIONS=${PRECISIONS:-f32}
COUNTS=${COUNTS:-1}
OUT_DIR=${OUT_DIR:-target/gpu-bench}
if [[ -z "${FEATURES:-}" ]]; then
  FEATURES=""
  [[ " $BACKENDS " == *" cuda "* ]] && FEATURES="cuda"
fi

mkdir -p "$OUT_DIR"
PROFILE=${PROFILE:-release}
if [[ -z "${BIN:-}" ]]; then
  echo "building llamagen ($PROFILE${FEATURES:+, features $FEATURES})" >&2
  cargo build --profile "$PROFILE" -q -p llamagen ${FEATURES:+--features "$FEATURES"}
  BIN=target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/llamagen
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true

# Greedy tokens (top-k 1) of the bundled demo on each backend against the CPU's host sampler: the
# device kernels and the device sampler must pick the same tokens, up to near-ties in f32.
if [[ ${CHECK:-1} == 1 ]]; then
  for backend in cpu $BACKENDS; do
    "$BIN" generate --class 0 --class 3 --seed 7 --top-k 1 --backend "$backend" \
      --out "$OUT_DIR/greedy-$backend.png" >/dev/null 2>"$OUT_DIR/greedy-$backend.err" &&
      "$BIN" info "$OUT_DIR/greedy-$backend.png" --json >"$OUT_DIR/greedy-$backend.json" ||
      { echo "greedy $backend: failed: $(tail -1 "$OUT_DIR/greedy-$backend.err")" >&2; continue; }
    [[ $backend == cpu ]] && continue
    python3 - "$OUT_DIR/greedy-cpu.json" "$OUT_DIR/greedy-$backend.json" "$backend" <<'PY' >&2
import json, sys
a, b = (json.load(open(p))["samples"] for p in sys.argv[1:3])
for i, (x, y) in enumerate(zip(a, b)):
    diff = [j for j, (s, t) in enumerate(zip(x["tokens"], y["tokens"])) if s != t]
    first = f", first at {diff[0]}" if diff else ""
    print(f"greedy {sys.argv[3]} vs cpu, image {i}: {len(x['tokens']) - len(diff)}/{len(x['tokens'])} tokens equal{first} (sampling: {y.get('sampling')})")
PY
  done
fi

: > "$OUT_DIR/bench.jsonl"
printf '| config | backend | precision | weights MB | batch | tokens | steps/s | tokens/s | launches/step | syncs/step | compiles after warm-up | autotunes after warm-up |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for config in $CONFIGS; do
  for grid in $GRIDS; do
    for batch in $BATCHES; do
      for backend in $BACKENDS; do
        for precision in $PRECISIONS; do
        [[ $backend == wgpu && $precision == bf16 ]] && continue
        line=$(${STEP_TIMEOUT:+timeout "$STEP_TIMEOUT"} "$BIN" bench --config "$config" --grid "$grid" --batch "$batch" --cfg-scale 4 \
          --backend "$backend" --precision "$precision" --warmup "$WARMUP" --runs "$RUNS" \
          $([[ $COUNTS == 1 ]] || echo --no-counts) --json 2>"$OUT_DIR/last.err") || {
          printf '| %s | %s | %s | | %s | %s | failed: %s |||||\n' "$config" "$backend" "$precision" \
            "$batch" "$((grid * grid))" "$(tail -1 "$OUT_DIR/last.err" | tr '|' '/')"
          continue
        }
        echo "$line" >> "$OUT_DIR/bench.jsonl"
        python3 - "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
f = lambda v, d=1: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
print(f"| {r['config']} | {r['backend']} | {r['precision']} | {r['weights_bytes'] / 1e6:.0f} | {r['batch']} | {r['grid']**2} | {f(r['decode_steps_per_s'])} "
      f"| {f(r['tokens_per_s'])} | {f(r['kernel_launches_per_step'])} | {f(r['host_syncs_per_step'], 2)} "
      f"| {f(r['compilations_after_warmup'])} | {f(r['autotunes_after_warmup'])} |")
PY
        done
      done
    done
  done
done
