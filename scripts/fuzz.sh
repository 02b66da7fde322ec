#!/usr/bin/env bash
# Fuzzes every file reader: each target in fuzz/fuzz_targets for SECONDS, then prints each
# target's executions, coverage and crashes.
#
#   bash scripts/fuzz.sh SECONDS [TARGET ...]      # e.g. bash scripts/fuzz.sh 300
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and installs cargo-fuzz from
# crates.io when it is missing. The targets' bodies are in tests/src/fuzz.rs.
#
# Corpora: each target starts from its kept corpus (fuzz/corpus/TARGET, committed and replayed
# on stable by `cargo test`: tests/tests/suite/fuzz_replay.rs) plus real files added here as seeds
# (the reference fixtures' checkpoints, the bundled models' cards and tokenizer). What a run
# learns goes to target/fuzz/corpus/TARGET; FUZZ_KEEP=1 merges it, minimised and without files
# over 64 KB, back into fuzz/corpus. A crash is written to fuzz/artifacts/TARGET/ and stops
# nothing else: the summary lists it; keep it under fuzz/regressions/TARGET/ once fixed.
#
# FUZZ_SANITIZER (default none: the readers are safe Rust and the speed buys executions;
# `address` also checks the dependencies' unsafe code), FUZZ_JOBS (default 1),
# FUZZ_RSS_MB (default 2048: an input that makes a reader allocate more is a bug).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:?usage: scripts/fuzz.sh SECONDS [TARGET ...]}"
shift
sanitizer="${FUZZ_SANITIZER:-none}"
rss="${FUZZ_RSS_MB:-2048}"
reference="${LLAMAGEN_REFERENCE_DIR:-../shared/fixtures/reference}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

# One build for every target; -a keeps debug assertions and overflow checks, as the tests do.
(cd fuzz && cargo +nightly fuzz build -a -s "$sanitizer")

work="target/fuzz"
mkdir -p "$work"
seed() {  # seed TARGET FILE...: copies real files into the run's seed folder
    local dir="$work/seeds/$1"
    shift
    mkdir -p "$dir"
    for f in "$@"; do [ -f "$f" ] && cp "$f" "$dir/" || true; done
}
seed checkpoint_pt "$reference"/*.pt
seed checkpoint_safetensors "$reference"/gpt_*_tiny.safetensors "$reference"/gpt_c2i_gqa.safetensors \
    "$reference"/t5_tiny.safetensors "$reference"/patchgan_tiny.safetensors "$reference"/t5_tiny_hf/model.safetensors
seed model_card assets/*/model.json
seed t5_config "$reference"/t5_tiny_hf/config.json assets/*/t5/config.json

summary="$work/summary.txt"
: >"$summary"
total=0
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    # libFuzzer stops at a corpus folder that does not exist: targets with no kept corpus yet
    # (the checkpoint readers) get an empty one.
    mkdir -p "$corpus" "$work/seeds/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    log="$work/$t.log"
    max_len=4096
    case "$t" in checkpoint_*) max_len=1048576 ;; prompt_tokenizer | t5_config) max_len=65536 ;; esac
    echo "== $t: ${seconds}s" >&2
    # Crashes of this run only (artifacts of earlier runs stay until someone deletes them).
    stamp="$work/$t.started"
    touch "$stamp"
    set +e
    (cd fuzz && cargo +nightly fuzz run -a -s "$sanitizer" "$t" \
        "../$corpus" "corpus/$t" "../$work/seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -malloc_limit_mb="$rss" -timeout=20 \
        -max_len="$max_len" -print_final_stats=1 -jobs="${FUZZ_JOBS:-1}" -workers="${FUZZ_JOBS:-1}") \
        >"$log" 2>&1
    status=$?
    set -e
    # A run that stopped early prints no statistics: the greps find nothing, which is no error.
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    crashes=$(find "fuzz/artifacts/$t" -type f -newer "$stamp" | wc -l)
    total=$((total + ${execs:-0}))
    printf '%-24s executions %10s  coverage %6s  features %6s  crashes %s%s\n' "$t" "${execs:-?}" \
        "${cov:-?}" "${ft:-?}" "$crashes" "$([ $status -ne 0 ] && echo "  (exit $status: see $log)")" |
        tee -a "$summary"
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        (cd fuzz && cargo +nightly fuzz cmin -a -s "$sanitizer" "$t" "../$corpus" -- -max_len="$max_len") \
            >>"$log" 2>&1 || true
        find "$corpus" -type f -size -64k -exec cp {} "fuzz/corpus/$t/" \;
    fi
done
echo "total executions: $total" | tee -a "$summary"
