#!/usr/bin/env bash
# dev/fuzz/run_fuzz.sh SECONDS [target...] — build the libFuzzer targets, make their seed
# corpora if missing, fuzz each target for SECONDS and print one summary line per target.
#
#   targets: fuzz_shard fuzz_checkpoint fuzz_tokenizer fuzz_cli (default: all four; the
#            fuzz_ prefix may be left out)
#   outputs (all git-ignored): dev/fuzz/fuzz_<name> binaries, dev/fuzz/corpus/<target>/ (seeds
#            and what the fuzzer adds), dev/fuzz/crashes/<target>-crash-<sha1> and -leak-,
#            -timeout-, -oom- artifacts, dev/fuzz/logs/<target>.log
#   env:     FUZZ_CC (clang), FUZZ_NICE (10), FUZZ_TIMEOUT (per-input seconds, 25),
#            FUZZ_FLAGS (more libFuzzer flags, e.g. -jobs=2 or -detect_leaks=0),
#            TLM_FUZZ_FORWARD (fuzz_checkpoint: "all" also runs titans/hope forward, "0" none)
# Reproduce a crash:  dev/fuzz/fuzz_<name> dev/fuzz/crashes/<file>
# Minimise it:        dev/fuzz/fuzz_<name> -minimize_crash=1 -runs=10000 dev/fuzz/crashes/<file>
# Exit status: 0 when no target crashed, 1 otherwise (2: usage or build error).
set -u
cd "$(dirname "$0")/../.." || exit 2

usage() { echo "usage: dev/fuzz/run_fuzz.sh SECONDS [fuzz_shard|fuzz_checkpoint|fuzz_tokenizer|fuzz_cli ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
seconds=$1; shift
case "$seconds" in ''|*[!0-9]*) usage ;; esac
all="fuzz_shard fuzz_checkpoint fuzz_tokenizer fuzz_cli"
targets=()
for t in "${@:-$all}"; do
    for u in $t; do
        u=fuzz_${u#fuzz_}
        case " $all " in *" $u "*) targets+=("$u") ;; *) echo "unknown target '$u' (have: $all)" >&2; exit 2 ;; esac
    done
done

D=dev/fuzz
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null 2>&1 || CC=clang-14
NICE=${FUZZ_NICE:-10}
CFLAGS="-g -O1 -std=c11 -Wall -Wextra -Wno-unused-function -DTLM_TESTING"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
mkdir -p "$D/crashes" "$D/logs" "$D/corpus"

# build what is out of date (the trainer and the harness change under us)
newer() { local out=$1; shift; [ ! -e "$out" ] && return 0; for s in "$@"; do [ "$s" -nt "$out" ] && return 0; done; return 1; }
for t in "${targets[@]}"; do
    if newer "$D/$t" "$D/$t.c" "$D/fuzz_common.h" train_tlm.c; then
        echo "build: $CC $SAN $CFLAGS $D/$t.c -lm -o $D/$t"
        if ! nice -n "$NICE" $CC $SAN $CFLAGS "$D/$t.c" -lm -o "$D/$t"; then
            echo "error: building $t failed (clang with libFuzzer is needed: on Debian, apt-get install clang libclang-rt-14-dev)" >&2
            exit 2
        fi
    fi
done

# seeds, made with the trainer's own code, when a corpus is missing or empty
need_seeds=0
for t in "${targets[@]}"; do [ -n "$(ls -A "$D/corpus/$t" 2>/dev/null)" ] || need_seeds=1; done
[ -e "$D/corpus/cli.dict" ] || need_seeds=1
if [ $need_seeds = 1 ]; then
    if newer "$D/make_seeds" "$D/make_seeds.c" train_tlm.c; then
        $CC $CFLAGS "$D/make_seeds.c" -lm -o "$D/make_seeds" || exit 2
    fi
    "$D/make_seeds" "$D/corpus" || exit 2
fi

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary=()
failed=0
for t in "${targets[@]}"; do
    log=$D/logs/$t.log
    stamp=$D/logs/.$t.start
    touch "$stamp"
    extra=()
    [ "$t" = fuzz_cli ] && extra+=("-dict=$D/corpus/cli.dict")
    # shellcheck disable=SC2086
    cmd=(nice -n "$NICE" "./$D/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout="${FUZZ_TIMEOUT:-25}"
         -artifact_prefix="$D/crashes/$t-" "${extra[@]}" ${FUZZ_FLAGS:-} "$D/corpus/$t")
    echo "run: ${cmd[*]}  (log: $log)"
    "${cmd[@]}" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(printf '%s\n' "$last" | sed -n 's/^#\([0-9]*\).*/\1/p')
    cov=$(printf '%s\n' "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p')
    new=$(find "$D/crashes" -maxdepth 1 -type f -name "$t-*" -newer "$stamp" | sort)
    ncrash=$(printf '%s' "$new" | grep -c . || true)
    what=$(grep -m1 -E '^SUMMARY: |ERROR: libFuzzer|fuzz invariant failed' "$log" | cut -c1-160)
    line=$(printf '%-16s execs %-9s cov %-5s ft %-6s corpus %-10s crashes %s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$ncrash")
    if [ "$rc" -ne 0 ] || [ "$ncrash" -gt 0 ]; then
        failed=1
        line="$line  (exit $rc) ${what:-see $log}"
        for f in $new; do line="$line"$'\n'"                 artifact: $f"; done
    fi
    summary+=("$line")
    echo "$line"
done

echo
echo "fuzz summary ($seconds s per target; logs in $D/logs/):"
for s in "${summary[@]}"; do echo "  $s"; done
exit $failed
