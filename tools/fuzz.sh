#!/bin/sh
# Run the libFuzzer targets one after the other, each for TIME seconds,
# on the seeds in fuzz/corpus/TARGET plus what earlier runs found in
# OUT/corpus/TARGET (new inputs go there); crashes, leaks and timeouts
# are saved in OUT/artifacts/, full logs in OUT/logs/.
# Usage: tools/fuzz.sh OUT TIME 'MORE LIBFUZZER OPTIONS' TARGET...

out=$1
time=$2
opts=$3
shift 3

failed=""
mkdir -p "$out/artifacts" "$out/logs"

for t in "$@"; do
    if [ ! -x "$out/$t" ]; then
        echo "fuzz: $out/$t is missing" >&2
        failed="$failed $t"
        continue
    fi

    mkdir -p "$out/corpus/$t" "fuzz/corpus/$t"

    # the channel targets take sequences of frames: allow longer inputs;
    # the library logs every refused channel on stderr: keep it quiet
    # (the sanitizers' and the targets' reports still get through)
    case $t in
    lib_frames|lib_hello) len="-max_len=16384 -close_fd_mask=2" ;;
    *)                    len="" ;;
    esac

    log="$out/logs/$t.log"
    echo "fuzz: $t for ${time}s (log: $log)"

    # shellcheck disable=SC2086
    "$out/$t" -max_total_time="$time" -timeout=10 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" \
        $len $opts "$out/corpus/$t" "fuzz/corpus/$t" > "$log" 2>&1
    rc=$?

    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    cov=$(echo "$last" | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+')

    echo "fuzz: $t: ${runs:-?} runs, ${rate:-?} exec/s, $cov," \
         "peak rss ${rss:-?} MB, exit $rc"

    if [ "$rc" != 0 ]; then
        grep -E 'ERROR|SUMMARY|invariant failed|runtime error|Test unit written' \
            "$log" | head -20
        failed="$failed $t"
    fi
done

if [ -n "$failed" ]; then
    echo "fuzz: FAILED:$failed (see $out/logs/ and $out/artifacts/)" >&2
    exit 1
fi

echo "fuzz: all targets ran ${time}s each without a finding"
