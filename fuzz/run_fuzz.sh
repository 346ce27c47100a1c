#!/usr/bin/env bash
# Runs every libFuzzer harness in BUILD_DIR (default build-fuzz) for FUZZ_TIME seconds each
# (default 60), from seeds made out of tests/bad_inputs and the pipelines. The growing corpus
# stays in BUILD_DIR/corpus/<name>; a crash is saved as BUILD_DIR/crashes/<name>-crash-* and
# fails the run: turn it into a case of tests/test_bad_inputs.c (see fuzz/README.md).
set -u
cd "$(dirname "$0")/.."
B=${1:-build-fuzz}
T=${FUZZ_TIME:-60}
mkdir -p "$B/crashes"
seed() { # seed NAME PREFIX_BYTE FILES... : copies files into the corpus, with an optional first byte
    local name=$1 prefix=$2; shift 2
    mkdir -p "$B/corpus/$name"
    for f in "$@"; do
        [ -f "$f" ] || continue
        local dst="$B/corpus/$name/seed_$(echo "$f" | tr '/' '_')"
        if [ -n "$prefix" ]; then { printf "$prefix"; cat "$f"; } > "$dst"; else cp "$f" "$dst"; fi
    done
}
seed mtx "" tests/bad_inputs/*.mtx tests/bad_inputs/*.mtx.gz tests/bad_inputs/tenx_*/matrix.mtx
seed table '\000' tests/bad_inputs/*.tsv
seed table '\001' tests/bad_inputs/*.csv
seed yaml "" tests/bad_inputs/*.yaml pipelines/*.yaml
mkdir -p "$B/corpus/h5"
status=0
for h in "$B"/fuzz_*; do
    [ -x "$h" ] || continue
    name=${h##*/fuzz_}
    echo "=== fuzz_$name for ${T}s"
    if ! "$h" -max_total_time="$T" -max_len=4096 -len_control=0 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$B/crashes/$name-" -print_final_stats=1 "$B/corpus/$name" 2>"$B/fuzz_$name.log"; then
        echo "fuzz_$name FAILED: see $B/fuzz_$name.log and $B/crashes/"; tail -40 "$B/fuzz_$name.log"
        status=1
    else
        grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$B/fuzz_$name.log" | tr '\n' ' '; echo
    fi
done
exit $status
