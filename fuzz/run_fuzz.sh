#!/usr/bin/env bash
# Runs every libFuzzer harness in BUILD_DIR (default build-fuzz) for FUZZ_TIME seconds each
# (default 60). Inputs: the corpus kept in the repository (fuzz/corpus/<name>, read only), seeds
# made afresh from tests/bad_inputs and the pipelines (so a new bad input is fuzzed at once),
# and the growing corpus BUILD_DIR/corpus/<name>, where new units go. A crash is saved as
# BUILD_DIR/crashes/<name>-crash-* and fails the run: turn it into a case of
# tests/test_bad_inputs.c (see fuzz/README.md).
# FUZZ_MERGE=1 afterwards adds the units that reach new code to fuzz/corpus/<name> (libFuzzer's
# -merge=1 keeps the smallest set with the same coverage), to be committed.
set -u
cd "$(dirname "$0")/.."
B=${1:-build-fuzz}
T=${FUZZ_TIME:-60}
mkdir -p "$B/crashes"
seed() { # seed NAME PREFIX_BYTE FILES... : copies files into the seeds, with an optional first byte
    local name=$1 prefix=$2; shift 2
    mkdir -p "$B/seeds/$name"
    for f in "$@"; do
        [ -f "$f" ] || continue
        local dst="$B/seeds/$name/seed_$(echo "$f" | tr '/' '_')"
        if [ -n "$prefix" ]; then { printf "$prefix"; cat "$f"; } > "$dst"; else cp "$f" "$dst"; fi
    done
}
seed mtx "" tests/bad_inputs/*.mtx tests/bad_inputs/*.mtx.gz tests/bad_inputs/tenx_*/matrix.mtx
seed table '\000' tests/bad_inputs/*.tsv
seed table '\001' tests/bad_inputs/*.csv
seed yaml "" tests/bad_inputs/*.yaml pipelines/*.yaml
mkdir -p "$B/seeds/h5"
status=0
for h in "$B"/fuzz_*; do
    [ -x "$h" ] || continue
    name=${h##*/fuzz_}
    mkdir -p "$B/corpus/$name" "fuzz/corpus/$name"
    echo "=== fuzz_$name for ${T}s"
    if ! "$h" -max_total_time="$T" -max_len=4096 -len_control=0 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$B/crashes/$name-" -print_final_stats=1 \
        "$B/corpus/$name" "fuzz/corpus/$name" "$B/seeds/$name" 2>"$B/fuzz_$name.log"; then
        echo "fuzz_$name FAILED: see $B/fuzz_$name.log and $B/crashes/"; tail -40 "$B/fuzz_$name.log"
        status=1
    else
        grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$B/fuzz_$name.log" | tr '\n' ' '; echo
    fi
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        # inputs that crash are left out of the merge (and saved with the crashes)
        "$h" -merge=1 -max_len=4096 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$B/crashes/$name-" \
            "fuzz/corpus/$name" "$B/corpus/$name" \
            "$B/seeds/$name" 2>"$B/merge_$name.log" || { echo "merge into fuzz/corpus/$name failed"; status=1; }
        echo "fuzz/corpus/$name: $(ls "fuzz/corpus/$name" | wc -l) files, $(du -sk --apparent-size "fuzz/corpus/$name" | cut -f1) KB"
    fi
done
exit $status
