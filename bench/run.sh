#!/bin/bash
# Benchmark ngx_http_shm_module against return 200, proxy_pass,
# fastcgi_pass and uwsgi_pass, behind one front nginx.  See
# docs/performance.md for the method.
#
# Usage: sh bench/run.sh        (make bench; make bench-quick = QUICK=1)
#
# Environment:
#   QUICK=1          5 B and 1 MiB responses only, c=64, 3 s, 1 round;
#                    writes bench/results/quick.*
#   WORKERS=1        front nginx worker_processes
#   DURATION=4       seconds per run          (QUICK: 3)
#   ROUNDS=3         rounds per cell; medians (QUICK: 1)
#   CONCURRENCY="1 16 64 256"                 (QUICK: 64)
#   WORKLOADS="5B 1KiB 64KiB 1MiB POST1MiB"   (QUICK: 5B 1MiB)
#   CONTENDERS="return shm proxy fastcgi uwsgi"  (uwsgi only if installed)
#   BUFFERS=         "N SIZE": proxy_buffers, fastcgi_buffers,
#                    uwsgi_buffers and shm_buffers for every contender
#                    (default: nginx's, 8 4k|8k)
#   BUSY=            SIZE: the *_busy_buffers_size of every contender
#                    (default: each module's)
#   WRK_THREADS=1    wrk threads (at most the concurrency)
#   SHM_THREADS=1    libngxshm sidecar loop threads
#   IDLE=5           seconds of the idle wake-up count
#   PORT_BASE=38470  the contenders listen on PORT_BASE+1 ... +5
#   OUT=latest       results basename in bench/results (QUICK: quick)
#   NGINX=/usr/sbin/nginx
#   SHM_CONF=        more directives for the shm_pass location only, e.g.
#                    "shm_busy_buffers_size 16k;" (reported with results)
#   PERF_DIR=        if set, "perf record -g" the front worker(s) and the
#                    backend during each run, into PERF_DIR/*.data
#
# Everything runs under build/bench/run and listens on 127.0.0.1 or UNIX
# sockets only; every process it starts is stopped on exit, also on
# failure or Ctrl-C.

[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"

set -u
export LC_ALL=C

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
B=$build/bench
R=$B/run
res=$top/bench/results

QUICK=${QUICK:-0}
[ "$QUICK" = 0 ] && QUICK=""

if [ -n "$QUICK" ]; then
    DURATION=${DURATION:-3}
    ROUNDS=${ROUNDS:-1}
    CONCURRENCY=${CONCURRENCY:-64}
    WORKLOADS=${WORKLOADS:-5B 1MiB}
    OUT=${OUT:-quick}
else
    DURATION=${DURATION:-4}
    ROUNDS=${ROUNDS:-3}
    CONCURRENCY=${CONCURRENCY:-1 16 64 256}
    WORKLOADS=${WORKLOADS:-5B 1KiB 64KiB 1MiB POST1MiB}
    OUT=${OUT:-latest}
fi

WORKERS=${WORKERS:-1}
PERF_DIR=${PERF_DIR:-}
SHM_CONF=${SHM_CONF:-}
[ -z "$PERF_DIR" ] || mkdir -p "$PERF_DIR"
WRK_THREADS=${WRK_THREADS:-1}
SHM_THREADS=${SHM_THREADS:-1}
IDLE=${IDLE:-5}
PORT_BASE=${PORT_BASE:-38470}
NGINX=${NGINX:-/usr/sbin/nginx}
CONTENDERS=${CONTENDERS:-return shm proxy fastcgi uwsgi}
BUFFERS=${BUFFERS:-}
BUSY=${BUSY:-}

CLK_TCK=$(getconf CLK_TCK)
T0=$(date +%s)

log() {
    printf '%s bench: %s\n' "$(date +%T)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}


# ---------------------------------------------------------------- names

port_of() {
    case $1 in
    return)  echo $((PORT_BASE + 1)) ;;
    shm)     echo $((PORT_BASE + 2)) ;;
    proxy)   echo $((PORT_BASE + 3)) ;;
    fastcgi) echo $((PORT_BASE + 4)) ;;
    uwsgi)   echo $((PORT_BASE + 5)) ;;
    esac
}

label_of() {
    case $1 in
    return)  echo "return 200 / static" ;;
    shm)     echo "shm_pass" ;;
    proxy)   echo "proxy_pass (unix, keepalive)" ;;
    fastcgi) echo "fastcgi_pass (unix, libfcgi)" ;;
    uwsgi)   echo "uwsgi_pass (unix, symcall C)" ;;
    esac
}

# workload -> "METHOD PATH BYTES"
workload_of() {
    case $1 in
    5B)       echo "GET /5 5" ;;
    1KiB)     echo "GET /1k 1024" ;;
    64KiB)    echo "GET /64k 65536" ;;
    1MiB)     echo "GET /1m 1048576" ;;
    POST1MiB) echo "POST /echo 1048576" ;;
    *)        return 1 ;;
    esac
}


# ------------------------------------------------------------ processes

STARTED=""          # "name:pid" of everything started, for cleanup
WRKPID=""

alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null
}

# children PID: the pids whose parent is PID
children() {
    local f line rest a

    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null < "$f" || continue
        rest=${line##*) }
        read -r -a a <<< "$rest"
        [ "${a[1]}" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
}

# stop_pid PID SIGNAL: signal, wait up to 5 s, then SIGKILL it and the
# children it had
stop_pid() {
    local pid=$1 sig=$2 kids n

    alive "$pid" || return 0
    kids=$(children "$pid")
    kill "-$sig" "$pid" 2>/dev/null
    n=50
    while alive "$pid" && [ $n -gt 0 ]; do
        sleep 0.1
        n=$((n - 1))
    done

    if alive "$pid"; then
        log "pid $pid did not stop on SIG$sig, killing it"
        kill -KILL "$pid" 2>/dev/null
    fi

    for k in $kids; do
        alive "$k" && kill -KILL "$k" 2>/dev/null
    done

    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local e name pid

    trap - EXIT INT TERM HUP

    if alive "$WRKPID"; then
        kill -TERM "$WRKPID" 2>/dev/null
        wait "$WRKPID" 2>/dev/null
    fi

    for e in $STARTED; do
        name=${e%%:*}
        pid=${e#*:}
        case $name in
        front|back) stop_pid "$pid" TERM ;;   # nginx: fast shutdown
        *)          stop_pid "$pid" TERM ;;
        esac
    done

    rm -f "$R"/*.sock
    STARTED=""
}

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# leftovers of an earlier run that was killed without its cleanup: only
# processes whose command line names our run directory or binaries
for f in "$R"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null)
    if alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null |
            grep -q "$B"; then
        log "stopping leftover pid $pid ($f)"
        stop_pid "$pid" TERM
    fi
    rm -f "$f"
done

# wait_for TEST-COMMAND... : up to 5 s
wait_for() {
    local n=50

    while ! "$@"; do
        n=$((n - 1))
        [ $n -gt 0 ] || return 1
        sleep 0.1
    done
}

# cpu_ticks PID...: utime + stime of the processes (all their threads)
cpu_ticks() {
    local t=0 p line rest a

    for p in "$@"; do
        read -r line 2>/dev/null < "/proc/$p/stat" || continue
        rest=${line##*) }
        read -r -a a <<< "$rest"
        t=$((t + a[11] + a[12]))
    done

    echo $t
}

# ctx_switches PID...: "voluntary nonvoluntary", summed over all threads
ctx_switches() {
    local v=0 nv=0 p f k val

    for p in "$@"; do
        for f in /proc/"$p"/task/*/status; do
            [ -r "$f" ] || continue
            while read -r k val; do
                case $k in
                voluntary_ctxt_switches:)    v=$((v + val)) ;;
                nonvoluntary_ctxt_switches:) nv=$((nv + val)) ;;
                esac
            done < "$f"
        done
    done

    echo "$v $nv"
}


# ---------------------------------------------------------------- checks

for f in "$build/ngx_http_shm_module.so" "$build/libngxshm.a" \
         "$top/include/ngxshm.h"
do
    [ -e "$f" ] || die "$f is missing: run make first"
done

for c in "$NGINX" wrk spawn-fcgi curl cc; do
    command -v "$c" > /dev/null || die "$c is not installed (make bench installs it)"
done

command -v gnuplot > /dev/null || log "gnuplot is not installed: no plot"

have_uwsgi=""
if command -v uwsgi > /dev/null && [ -e /usr/lib/uwsgi/plugins/symcall_plugin.so ]
then
    have_uwsgi=1
fi

list=""
for c in $CONTENDERS; do
    case $c in
    return|shm|proxy|fastcgi) list="$list $c" ;;
    uwsgi)
        if [ -n "$have_uwsgi" ]; then
            list="$list $c"
        else
            log "uwsgi (uwsgi-core) is not installed: skipping uwsgi_pass"
        fi
        ;;
    *) die "unknown contender \"$c\"" ;;
    esac
done
CONTENDERS=${list# }

case " $CONTENDERS " in
*" shm "*) ;;
*) die "CONTENDERS must include shm (ratios are to shm_pass)" ;;
esac

for w in $WORKLOADS; do
    workload_of "$w" > /dev/null || die "unknown workload \"$w\""
done

for c in $CONCURRENCY; do
    [ "$c" -ge 1 ] 2>/dev/null || die "bad concurrency \"$c\""
done

for c in $CONTENDERS; do
    p=$(port_of "$c")
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "127.0.0.1:$p is in use (set PORT_BASE)"
    fi
done


# ----------------------------------------------------------------- build

mkdir -p "$B" "$res"
rm -rf "$R"
mkdir -p "$R/front" "$R/back" "$R/www"

CFLAGS_BENCH="-std=gnu11 -O2 -g -Wall -Wextra -D_GNU_SOURCE"

log "building the backends in $B"
cc $CFLAGS_BENCH -I"$top/include" -o "$B/ngxshm-bench" "$top/bench/sidecar.c" \
    "$build/libngxshm.a" -lpthread || die "cannot build bench/sidecar.c"
cc $CFLAGS_BENCH -o "$B/fcgi-responder" "$top/bench/fcgi-responder.c" \
    -lfcgi || die "cannot build bench/fcgi-responder.c (libfcgi-dev?)"

if [ -n "$have_uwsgi" ] && case " $CONTENDERS " in *" uwsgi "*) true;;
                               *) false;; esac
then
    uwsgi --dot-h > "$B/uwsgi.h" 2>/dev/null
    # shellcheck disable=SC2046
    if ! cc $(uwsgi --cflags 2>/dev/null) -I"$B" -shared -fPIC \
            -o "$B/uwsgi-handler.so" "$top/bench/uwsgi-handler.c" \
            2> "$R/uwsgi-build.log"
    then
        log "cannot build bench/uwsgi-handler.c, skipping uwsgi_pass:"
        head -5 "$R/uwsgi-build.log" >&2
        CONTENDERS=$(echo " $CONTENDERS " | sed 's/ uwsgi / /; s/^ //; s/ $//')
    fi
fi

# the static bodies: the same bytes as the generated ones
body() {
    head -c "$1" < <(yes abcdefghijklmnopqrstuvwxyz | tr -d '\n')
}
body 1024 > "$R/www/1k"
body 65536 > "$R/www/64k"
body 1048576 > "$R/www/1m"
body 1048576 | tr 'a-z' 'x' > "$R/post.body"


# ----------------------------------------------------------------- start

user=""
[ "$(id -u)" = 0 ] && user="user root;"

fill() {
    local b=""

    # "@" stands for each module's prefix
    [ -n "$BUFFERS" ] && b="@_buffers $BUFFERS;"
    [ -n "$BUSY" ] && b="$b @_busy_buffers_size $BUSY;"
    sed -e "s|@BUFFERS_SHM@|${b//@/shm} $SHM_CONF|" \
        -e "s|@BUFFERS_PROXY@|${b//@/proxy}|" \
        -e "s|@BUFFERS_FASTCGI@|${b//@/fastcgi}|" \
        -e "s|@BUFFERS_UWSGI@|${b//@/uwsgi}|" \
        -e "s|@BUILD@|$build|g" -e "s|@RUN@|$R|g" -e "s|@USER@|$user|g" \
        -e "s|@WORKERS@|$WORKERS|g" \
        -e "s|@PORT_RETURN@|$(port_of return)|g" \
        -e "s|@PORT_SHM@|$(port_of shm)|g" \
        -e "s|@PORT_PROXY@|$(port_of proxy)|g" \
        -e "s|@PORT_FASTCGI@|$(port_of fastcgi)|g" \
        -e "s|@PORT_UWSGI@|$(port_of uwsgi)|g" "$1" > "$2"
}

fill "$top/bench/nginx-front.conf.in" "$R/front/nginx.conf"
fill "$top/bench/nginx-back.conf.in" "$R/back/nginx.conf"

# start NAME LOG COMMAND...: start in the background, remember the pid
start() {
    local name=$1 out=$2 pid

    shift 2
    "$@" > "$out" 2>&1 < /dev/null &
    pid=$!
    STARTED="$name:$pid $STARTED"
    echo "$pid" > "$R/$name.pid"
    eval "PID_$name=$pid"
}

sock_up() {
    [ -S "$1" ]
}

# the source measured (when nginx loads the module): the commit, and whether the work tree differed from
# it; the module's and the library's build times
src_rev=$(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)
mod_time=$(date -u -r "$build/ngx_http_shm_module.so" '+%Y-%m-%d %H:%M UTC' 2>/dev/null)
lib_time=$(date -u -r "$build/libngxshm.a" '+%Y-%m-%d %H:%M UTC' 2>/dev/null)

log "starting the backends and nginx"

start shm "$R/shm.log" "$B/ngxshm-bench" -t "$SHM_THREADS" "$R/shm.sock"
wait_for sock_up "$R/shm.sock" || die "the shm sidecar did not start: $(tail -3 "$R/shm.log")"

start fastcgi "$R/fastcgi.log" spawn-fcgi -n -s "$R/fcgi.sock" -M 0600 \
    -b 1024 -- "$B/fcgi-responder"
wait_for sock_up "$R/fcgi.sock" || die "the FastCGI responder did not start: $(tail -3 "$R/fastcgi.log")"

if case " $CONTENDERS " in *" uwsgi "*) true;; *) false;; esac; then
    start uwsgi "$R/uwsgi.log" uwsgi --plugin symcall \
        --dlopen "$B/uwsgi-handler.so" --symcall bench_uwsgi_request \
        --socket "$R/uwsgi.sock" --chmod-socket=600 --listen 1024 \
        --processes 1 --disable-logging --die-on-term
    wait_for sock_up "$R/uwsgi.sock" || die "uwsgi did not start: $(tail -3 "$R/uwsgi.log")"
fi

"$NGINX" -t -q -p "$R/back/" -c "$R/back/nginx.conf" -e "$R/back/error.log" \
    2>&1 || die "bad backend nginx configuration"
start back "$R/back/stderr.log" "$NGINX" -p "$R/back/" \
    -c "$R/back/nginx.conf" -e "$R/back/error.log" -g "daemon off;"
wait_for sock_up "$R/back.sock" || die "the backend nginx did not start: $(tail -3 "$R/back/error.log")"

"$NGINX" -t -q -p "$R/front/" -c "$R/front/nginx.conf" \
    -e "$R/front/error.log" 2>&1 || die "bad front nginx configuration"
start front "$R/front/stderr.log" "$NGINX" -p "$R/front/" \
    -c "$R/front/nginx.conf" -e "$R/front/error.log" -g "daemon off;"

front_up() {
    (exec 3<>"/dev/tcp/127.0.0.1/$(port_of shm)") 2>/dev/null
}
wait_for front_up || die "the front nginx did not start: $(tail -3 "$R/front/error.log")"

# the pids whose CPU time counts, per contender
front_workers() {
    children "$PID_front"
}

backend_pids() {
    case $1 in
    return)  ;;
    shm)     echo "$PID_shm" ;;
    proxy)   children "$PID_back" ;;
    fastcgi) echo "$PID_fastcgi" ;;
    uwsgi)   echo "$PID_uwsgi"; children "$PID_uwsgi" ;;
    esac
}

n=50
while [ "$(front_workers | wc -l)" -lt "$WORKERS" ] && [ $n -gt 0 ]; do
    sleep 0.1
    n=$((n - 1))
done
FRONT_WORKERS=$(front_workers | tr '\n' ' ')
BACK_WORKERS=$(children "$PID_back" | tr '\n' ' ')
log "front nginx $PID_front (workers $FRONT_WORKERS), backend nginx" \
    "$PID_back (worker $BACK_WORKERS), shm sidecar $PID_shm," \
    "fcgi responder $PID_fastcgi${PID_uwsgi:+, uwsgi $PID_uwsgi}"


# ---------------------------------------------------------------- verify

# check CONTENDER WORKLOAD: one request with curl; status and body size
check() {
    local c=$1 w=$2 m p bytes url out

    read -r m p bytes <<< "$(workload_of "$w")"
    url="http://127.0.0.1:$(port_of "$c")$p"

    if [ "$m" = POST ]; then
        out=$(curl -sS -m 10 -o "$R/check.out" -w '%{http_code} %{size_download}' \
              -H 'Content-Type: application/octet-stream' \
              --data-binary "@$R/post.body" "$url" 2>&1)
    else
        out=$(curl -sS -m 10 -o "$R/check.out" -w '%{http_code} %{size_download}' \
              "$url" 2>&1)
    fi

    if [ "$out" != "200 $bytes" ]; then
        log "check failed: $c $w ($m $url): got \"$out\", want \"200 $bytes\""
        return 1
    fi

    if [ "$m" = POST ] && [ "$c" != return ] && [ "$c" != proxy ] &&
            ! cmp -s "$R/check.out" "$R/post.body"
    then
        log "check failed: $c $w: the body is not the echo of the request"
        return 1
    fi

    if [ "$m" = GET ] && [ -f "$R/www/${p#/}" ] &&
            ! cmp -s "$R/check.out" "$R/www/${p#/}"
    then
        log "check failed: $c $w: the body is not the expected bytes"
        return 1
    fi
}

# the shm channel first, then the idle wake-up count before any other
# contender has left connections or timers in the front worker
check shm 5B || die "shm_pass does not answer"

# idle_count TAG: voluntary context switches over IDLE seconds
IDLE_ROWS=""
idle_count() {
    local tag=$1 a0 a1 b0 b1 c0 c1 e0 e1

    sleep 0.5
    a0=$(ctx_switches $FRONT_WORKERS)
    b0=$(ctx_switches "$PID_shm")
    c0=$(ctx_switches $BACK_WORKERS)
    e0=$(ctx_switches "$PID_fastcgi")
    sleep "$IDLE"
    a1=$(ctx_switches $FRONT_WORKERS)
    b1=$(ctx_switches "$PID_shm")
    c1=$(ctx_switches $BACK_WORKERS)
    e1=$(ctx_switches "$PID_fastcgi")

    IDLE_ROWS="$IDLE_ROWS$tag|front nginx worker(s)|$(( ${a1% *} - ${a0% *} ))|$(( ${a1#* } - ${a0#* } ))
$tag|shm sidecar (all threads)|$(( ${b1% *} - ${b0% *} ))|$(( ${b1#* } - ${b0#* } ))
$tag|backend nginx worker|$(( ${c1% *} - ${c0% *} ))|$(( ${c1#* } - ${c0#* } ))
$tag|FastCGI responder|$(( ${e1% *} - ${e0% *} ))|$(( ${e1#* } - ${e0#* } ))
"
    log "idle $IDLE s ($tag): voluntary context switches: front" \
        "$(( ${a1% *} - ${a0% *} )), sidecar $(( ${b1% *} - ${b0% *} ))"
}

log "idle wake-ups over $IDLE s, shm channel open"
idle_count "channel open, before the runs"

for c in $CONTENDERS; do
    for w in $WORKLOADS; do
        check "$c" "$w" || die "contender $c does not serve $w correctly"
    done
done
log "every contender answers every workload correctly"


# ------------------------------------------------------------------ runs

RUNS=$R/runs.csv
echo "workload,concurrency,contender,round,requests,seconds,rps,p50_ms,p99_ms,cpu_ticks,cpu_ms_per_1k,errors,front_ticks,backend_ticks" > "$RUNS"

# to milliseconds: 123.45us, 1.23ms, 1.02s, 2.00m
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000;
        else if (u == "m") n *= 60000;
        printf "%.3f", n }'
}

# one_run CONTENDER WORKLOAD CONC ROUND|warm SECONDS
one_run() {
    local c=$1 w=$2 conc=$3 round=$4 secs=$5 m p bytes url t bpids
    local f0 f1 t0 t1 out reqs dur rps p50 p99 errs cpu

    read -r m p bytes <<< "$(workload_of "$w")"
    url="http://127.0.0.1:$(port_of "$c")$p"
    t=$WRK_THREADS
    [ "$t" -gt "$conc" ] && t=$conc
    out=$R/wrk.out

    set -- -t "$t" -c "$conc" -d "${secs}s" --timeout 10s --latency
    [ "$m" = POST ] && set -- "$@" -s "$top/bench/post.lua"

    bpids=$(backend_pids "$c" | tr '\n' ' ')
    # shellcheck disable=SC2086
    f0=$(cpu_ticks $FRONT_WORKERS)
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $bpids)

    timeout -k 5 $((secs + 20)) wrk "$@" "$url" > "$out" 2>&1 &
    WRKPID=$!

    if [ -n "$PERF_DIR" ] && [ "$round" != warm ]; then
        # shellcheck disable=SC2086
        perf record -q -g -o "$PERF_DIR/$c-$w-c$conc-r$round.data" \
            -p "$(echo $FRONT_WORKERS $bpids | tr ' ' ',')" \
            -- sleep "$((secs - 1))" > /dev/null 2>&1 \
            || log "perf record failed for $c $w c=$conc"
    fi

    wait $WRKPID
    WRKPID=""

    # shellcheck disable=SC2086
    f1=$(cpu_ticks $FRONT_WORKERS)
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $bpids)

    [ "$round" = warm ] && return 0

    reqs=$(awk '/ requests in / { print $1 }' "$out")
    dur=$(awk '/ requests in / { v = $4; sub(/,$/, "", v); print v }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    errs=$(awk '/Socket errors:/ { gsub(/[^0-9 ]/, " "); n = 0;
                                   for (i = 1; i <= NF; i++) n += $i; e += n }
                /Non-2xx or 3xx/ { e += $NF }
                END { print e + 0 }' "$out")

    if [ -z "$reqs" ] || [ -z "$rps" ] || [ -z "$p50" ]; then
        log "wrk failed for $c $w c=$conc:"
        sed 's/^/    /' "$out" >&2
        reqs=0 dur=0 rps=0 p50=0 p99=0 errs=-1
    fi

    p50=$(to_ms "$p50")
    p99=$(to_ms "$p99")
    cpu=$(awk -v t=$((f1 - f0 + t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" \
          'BEGIN { if (n > 0) printf "%.3f", t / hz * 1000 / n * 1000;
                   else print "" }')

    echo "$w,$conc,$c,$round,$reqs,${dur%s},$rps,$p50,$p99,$((f1 - f0 + t1 - t0)),$cpu,$errs,$((f1 - f0)),$((t1 - t0))" >> "$RUNS"
    printf '%s bench: %-8s c=%-3s %-7s round %s: %10s req/s  p50 %8s ms  p99 %8s ms  cpu %7s ms/1k%s\n' \
        "$(date +%T)" "$w" "$conc" "$c" "$round" "$rps" "$p50" "$p99" "$cpu" \
        "$([ "$errs" != 0 ] && echo "  errors $errs")" >&2
}

ncells=0
for w in $WORKLOADS; do for conc in $CONCURRENCY; do
    ncells=$((ncells + 1)); done; done
nc=$(echo $CONTENDERS | wc -w)
log "$ncells cells x $nc contenders x $ROUNDS rounds x $DURATION s" \
    "= about $((ncells * nc * ROUNDS * DURATION / 60 + 1)) min of runs"

for w in $WORKLOADS; do
    for conc in $CONCURRENCY; do
        # warm up each contender on this workload at this concurrency
        # (connections, caches, every side's memory for that many
        # requests at once): without it the first round of a higher
        # concurrency ran measurably slower than the next, for everyone;
        # make bench-quick (one round) keeps to its minute without it
        if [ -z "$QUICK" ] || [ "$ROUNDS" -gt 1 ]; then
            for c in $CONTENDERS; do
                one_run "$c" "$w" "$conc" warm 1
            done
        fi

        for round in $(seq 1 "$ROUNDS"); do
            for c in $CONTENDERS; do
                one_run "$c" "$w" "$conc" "$round" "$DURATION"
                sleep 0.2
            done
        done
    done
done

if [ -z "$QUICK" ]; then
    log "idle wake-ups over $IDLE s after the runs"
    idle_count "after the runs"
fi

# error log lines of the runs
errlines=$(grep -c -E '\[(alert|crit|emerg|error)\]' "$R/front/error.log" \
           "$R/back/error.log" 2>/dev/null | awk -F: '{ n += $2 } END { print n + 0 }')
warnlines=$(grep -c '\[warn\]' "$R/front/error.log" "$R/back/error.log" \
            2>/dev/null | awk -F: '{ n += $2 } END { print n + 0 }')

# the distinct error messages, without times, pids and request details
errsummary=$(cat "$R/front/error.log" "$R/back/error.log" 2>/dev/null |
    grep -E '\[(alert|crit|emerg|error)\]' |
    sed -E 's/^[0-9\/]+ [0-9:]+ //; s/ [0-9]+#[0-9]+: / /; s/\*[0-9]+ //;
            s/, client: .*//; s/with [0-9]+ streams/with N streams/' |
    sort | uniq -c | sort -rn | head -8)
sidecar_log=$(sed -E 's/\[[0-9]+\]/[PID]/; s/pid [0-9]+/pid N/' "$R/shm.log" \
    2>/dev/null | sort | uniq -c | sort -rn | head -8)

cleanup
log "all processes stopped"


# --------------------------------------------------------------- results

csv=$res/$OUT.csv
md=$res/$OUT.md
png=$res/$OUT.png
cp "$RUNS" "$res/$OUT-runs.csv"

# medians per (workload, concurrency, contender), ratios to shm_pass
awk -F, -v order="$CONTENDERS" -v worder="$WORKLOADS" -v corder="$CONCURRENCY" \
    -v hz="$CLK_TCK" '
function median(s,    a, n, i, j, t) {
    n = split(s, a, " ");
    for (i = 2; i <= n; i++) {
        t = a[i] + 0;
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j];
        a[j + 1] = t;
    }
    if (n == 0) return "";
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2;
}
function ratio(a, b) { return (b > 0 && a != "") ? sprintf("%.2f", a / b) : ""; }
NR == 1 { next }
{
    k = $1 SUBSEP $2 SUBSEP $3;
    rps[k] = rps[k] " " $7; p50[k] = p50[k] " " $8; p99[k] = p99[k] " " $9;
    if ($11 != "") cpu[k] = cpu[k] " " $11;
    if ($5 > 0) {
        fc[k] = fc[k] " " ($13 / hz * 1000000 / $5);
        bc[k] = bc[k] " " ($14 / hz * 1000000 / $5);
    }
    err[k] += ($12 > 0 ? $12 : 0); n[k]++;
}
END {
    print "workload,concurrency,contender,rounds,rps,p50_ms,p99_ms,cpu_ms_per_1k,errors,rps_vs_shm,p50_vs_shm,p99_vs_shm,cpu_vs_shm,front_cpu_ms_per_1k,backend_cpu_ms_per_1k";
    nw = split(worder, W, " "); ncc = split(corder, C, " "); nk = split(order, K, " ");
    for (i = 1; i <= nw; i++) for (j = 1; j <= ncc; j++) {
        s = W[i] SUBSEP C[j] SUBSEP "shm";
        sr = median(rps[s]); s50 = median(p50[s]); s99 = median(p99[s]); sc = median(cpu[s]);
        for (l = 1; l <= nk; l++) {
            k = W[i] SUBSEP C[j] SUBSEP K[l];
            if (!(k in n)) continue;
            r = median(rps[k]); a = median(p50[k]); b = median(p99[k]); c = median(cpu[k]);
            f = median(fc[k]); g = median(bc[k]);
            printf "%s,%s,%s,%d,%.0f,%.3f,%.3f,%s,%d,%s,%s,%s,%s,%s,%s\n", W[i], C[j], K[l], n[k],
                r, a, b, (c == "" ? "" : sprintf("%.3f", c)), err[k],
                ratio(r, sr), ratio(a, s50), ratio(b, s99), ratio(c, sc),
                (f == "" ? "" : sprintf("%.1f", f)), (g == "" ? "" : sprintf("%.1f", g));
        }
    }
}' "$RUNS" > "$csv"

label_map=""
for c in return shm proxy fastcgi uwsgi; do
    label_map="$label_map$c=$(label_of $c);"
done

host_cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
nginx_v=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
elapsed=$(( $(date +%s) - T0 ))

{
    echo "# ngx_http_shm_module benchmark: $([ -n "$QUICK" ] && echo "quick run" || echo "full run")"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($host_cpu)," \
         "Linux $(uname -r), $nginx_v, wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')."
    echo "Source: $src_rev (module built $mod_time, library built $lib_time)."
    echo "Front nginx: $WORKERS worker(s); wrk: $WRK_THREADS thread(s);" \
         "shm sidecar: $SHM_THREADS thread(s);" \
         "response buffers: ${BUFFERS:-defaults, 8 4k}, busy ${BUSY:-defaults}${SHM_CONF:+; shm_pass also: $SHM_CONF};" \
         "$DURATION s per run," \
         "$ROUNDS round(s) per cell (contenders alternated, median shown);" \
         "run took $((elapsed / 60)) min $((elapsed % 60)) s."
    echo "Error log: $errlines error/alert line(s), $warnlines warning(s)" \
         "in the front and backend nginx logs."
    echo
    echo "req/s, p50 and p99 latency from wrk; CPU = user+system time of the" \
         "front nginx worker(s) plus the backend process(es), per 1,000" \
         "requests (\"front / backend\": the two parts, in ms per 1,000 requests)." \
         "\"x shm\" = this contender / shm_pass (for req/s higher" \
         "is better, for latency and CPU lower is better)."
} > "$md"

awk -F, -v labels="$label_map" '
BEGIN {
    n = split(labels, L, ";");
    for (i = 1; i <= n; i++) { split(L[i], kv, "="); name[kv[1]] = kv[2]; }
}
NR == 1 { next }
{
    if ($1 != last) {
        printf "\n## %s\n\n", $1;
        print "| c | contender | req/s | x shm | p50 ms | x shm | p99 ms | x shm | CPU ms/1k req | x shm | front / backend | errors |";
        print "|--:|-----------|------:|------:|-------:|------:|-------:|------:|--------------:|------:|----------------:|-------:|";
        last = $1;
    }
    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n",
        $2, name[$3], $5, $10, $6, $11, $7, $12, $8, $13, $14, $15, $9;
}' "$csv" >> "$md"

# the targets, from the medians
IDLE_ROWS=$IDLE_ROWS awk -F, -v idle_s="$IDLE" '
NR == 1 { next }
{ k = $1 SUBSEP $2 SUBSEP $3; rps[k] = $5; p50[k] = $6; p99[k] = $7; cpu[k] = $8; seen[$1] = 1; conc[$2] = 1 }
function v(x) { return (x == "" ? "n/a" : x) }
function row(target, measured, ok) {
    printf "| %s | %s | %s |\n", target, measured, ok == "" ? "n/a" : (ok ? "met" : "**not met**");
}
END {
    print "\n## Targets (medians)\n";
    print "| target | measured | |";
    print "|--------|----------|-|";
    split("5B 1KiB", S, " ");
    for (i = 1; i <= 2; i++) {
        w = S[i];
        s = w SUBSEP 64 SUBSEP "shm"; p = w SUBSEP 64 SUBSEP "proxy"; r = w SUBSEP 64 SUBSEP "return";
        if (!(s in rps)) continue;
        if (p in rps && rps[p] > 0)
            row(w " c=64: shm_pass >= 1.6x proxy_pass req/s",
                sprintf("%.2fx (%d vs %d)", rps[s] / rps[p], rps[s], rps[p]), rps[s] >= 1.6 * rps[p]);
        if (r in rps && rps[r] > 0)
            row(w " c=64: shm_pass >= 0.8x return 200 req/s",
                sprintf("%.2fx (%d vs %d)", rps[s] / rps[r], rps[s], rps[r]), rps[s] >= 0.8 * rps[r]);
    }
    split("5B 1KiB 64KiB 1MiB POST1MiB", A, " ");
    for (i = 1; i <= 5; i++) {
        w = A[i]; s = w SUBSEP 64 SUBSEP "shm"; p = w SUBSEP 64 SUBSEP "proxy";
        if (!(s in rps) || !(p in rps) || cpu[p] == "" || cpu[p] == 0) continue;
        row(w " c=64: CPU per request <= 0.5x proxy_pass",
            sprintf("%.2fx (%.3f vs %.3f ms/1k)", cpu[s] / cpu[p], cpu[s], cpu[p]), cpu[s] <= 0.5 * cpu[p]);
    }
    for (i = 1; i <= 5; i++) {
        w = A[i]; s = w SUBSEP 64 SUBSEP "shm"; p = w SUBSEP 64 SUBSEP "proxy";
        if (!(s in rps) || !(p in rps)) continue;
        row(w " c=64: p99 <= proxy_pass p99",
            sprintf("%.3f vs %.3f ms", p99[s], p99[p]), p99[s] <= p99[p]);
    }
    for (c in conc) {
        s = "1MiB" SUBSEP c SUBSEP "shm"; p = "1MiB" SUBSEP c SUBSEP "proxy";
        if (!(s in rps) || !(p in rps) || rps[p] == 0) continue;
        cc[c + 0] = sprintf("%.2fx (%d vs %d)", rps[s] / rps[p], rps[s], rps[p]);
        ok[c + 0] = rps[s] >= 1.5 * rps[p];
    }
    for (c = 1; c <= 100000; c++) if (c in cc)
        row("1MiB c=" c ": shm_pass >= 1.5x proxy_pass req/s", cc[c], ok[c]);
    for (i = 1; i <= 5; i++) {
        w = A[i]; s = w SUBSEP 1 SUBSEP "shm"; p = w SUBSEP 1 SUBSEP "proxy";
        if (!(s in rps) || !(p in rps)) continue;
        row(w " c=1: p50 <= proxy_pass p50",
            sprintf("%.3f vs %.3f ms", p50[s], p50[p]), p50[s] <= p50[p]);
    }
    n = split(ENVIRON["IDLE_ROWS"], I, "\n");
    for (i = 1; i <= n; i++) {
        if (split(I[i], f, "|") < 4) continue;
        if (f[2] !~ /front|shm/) continue;
        row("idle " idle_s " s (" f[1] "): " f[2] ": 0 wake-ups",
            f[3] " voluntary, " f[4] " involuntary context switches", f[3] == 0);
    }
}' "$csv" >> "$md"

if [ -n "$errsummary" ] || [ -n "$sidecar_log" ]; then
    {
        echo
        echo "## Errors logged during the runs"
        echo
        if [ -n "$errsummary" ]; then
            echo "nginx error logs (count, message):"
            echo
            echo '```'
            echo "$errsummary"
            echo '```'
            echo
        fi
        if [ -n "$sidecar_log" ]; then
            echo "shm sidecar's standard error (count, line):"
            echo
            echo '```'
            echo "$sidecar_log"
            echo '```'
        fi
    } >> "$md"
fi

{
    echo
    echo "## Idle wake-ups ($IDLE s, no traffic)"
    echo
    echo "| when | process | voluntary | involuntary |"
    echo "|------|---------|----------:|------------:|"
    printf '%s' "$IDLE_ROWS" | awk -F'|' 'NF >= 4 { printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }'
    echo
    echo "Workloads: 5B = GET /5 (return 200 \"hello\" for the ceiling and the" \
         "backend nginx), 1KiB/64KiB/1MiB = GET of that many bytes (static" \
         "files with sendfile for the ceiling and the backend nginx), POST1MiB" \
         "= a 1 MiB POST echoed back by the shm, FastCGI and uwsgi backends;" \
         "the ceiling and the backend nginx read and discard it and send a" \
         "1 MiB static file instead (nginx cannot echo)."
} >> "$md"

# plot: req/s per workload per contender at c=64 (else the highest c)
pc=64
case " $CONCURRENCY " in *" 64 "*) ;; *) pc=${CONCURRENCY##* } ;; esac

if command -v gnuplot > /dev/null; then
    dat=$R/plot.dat
    awk -F, -v c="$pc" -v order="$CONTENDERS" -v worder="$WORKLOADS" '
    NR == 1 { next }
    $2 == c { v[$1, $3] = $5 }
    END {
        nk = split(order, K, " "); nw = split(worder, W, " ");
        split("return=return/static shm=shm_pass proxy=proxy_pass fastcgi=fastcgi_pass uwsgi=uwsgi_pass", N, " ");
        for (i in N) { split(N[i], kv, "="); name[kv[1]] = kv[2]; }
        printf "workload";
        for (l = 1; l <= nk; l++) printf " %s", name[K[l]];
        printf "\n";
        for (i = 1; i <= nw; i++) {
            printf "%s", W[i];
            for (l = 1; l <= nk; l++) printf " %s", ((W[i], K[l]) in v) ? v[W[i], K[l]] : "NaN";
            printf "\n";
        }
    }' "$csv" > "$dat"

    nk=$(echo $CONTENDERS | wc -w)
    if gnuplot -e "datafile='$dat'; outfile='$png'; ncols=$((nk + 1)); conc='$pc'" \
            "$top/bench/plot.gp" 2> "$R/gnuplot.log"
    then
        echo >> "$md"
        echo "![req/s at c=$pc]($OUT.png)" >> "$md"
    else
        log "gnuplot failed: $(head -3 "$R/gnuplot.log")"
    fi
fi

log "done in $((elapsed / 60)) min $((elapsed % 60)) s:"
log "  $md"
log "  $csv ($res/$OUT-runs.csv: every run)"
[ -f "$png" ] && log "  $png"
cat "$md"
