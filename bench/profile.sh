#!/bin/bash
# Instructions and system calls per request of the benchmark's contenders
# (return 200, shm_pass, proxy_pass, fastcgi_pass), for the front nginx
# worker and for the backend behind it.  See docs/performance.md.
#
# Usage: sh bench/profile.sh        (make profile)
#
# Three phases, each with freshly started processes configured as in
# bench/run.sh (the same nginx-front.conf.in / nginx-back.conf.in, one
# status-only server added to the front for the request counts):
#
#   1. the front nginx, single process (master_process off), runs under
#      valgrind --tool=callgrind with instrumentation off; per contender
#      and workload: a warm-up, then instrumentation on, counters zeroed,
#      wrk -c CG_CONC for CG_DURATION s, a dump, instrumentation off.
#      Ir of the dump / requests = instructions per request.
#   2. the same with the backends under callgrind (shm sidecar, backend
#      nginx single process, FastCGI responder) and the front native.
#   3. everything native; strace -c -f attached to the front nginx worker
#      and to the backend during wrk -c ST_CONC for ST_DURATION s:
#      system calls per request, by name.
#
# The request count of a run is the front's stub_status "requests" after
# minus before, minus the status request itself: it counts the requests
# wrk had in flight when it stopped, which the processes did serve.
#
# Environment:
#   WORKLOADS="5B 64KiB"     (also 1KiB 1MiB POST1MiB; POST1MiB posts
#                            1 MiB to /echo, which the shm sidecar and
#                            the FastCGI responder echo and the static
#                            contenders answer with the 1 MiB file)
#   CONTENDERS="return shm proxy fastcgi"
#   CG_CONC=8 CG_DURATION=3  callgrind runs: wrk connections, seconds
#   CG_ROUNDS=3              callgrind runs per cell (median reported)
#   ST_CONC=64 ST_DURATION=3 strace runs
#   WARM=1                   seconds of warm-up before each measured run
#   CG_REP_MOVSB=0           under callgrind, glibc's memcpy/memset copy
#                            with vector loops, not "rep movsb/stosb",
#                            which callgrind counts as one instruction per
#                            byte (1 = leave glibc's choice)
#   PHASES="callgrind strace"
#   LIMIT=900                give up (and clean up) after this many seconds
#   PORT_BASE=28570          contenders on PORT_BASE+1 ... +4, status +9
#                            (below the ephemeral range 32768-60999, where
#                            a client's TIME_WAIT can make bind() fail)
#   OUT=profile              bench/results/OUT.md and OUT.csv
#   NGINX=/usr/sbin/nginx
#
# Everything runs under build/bench/profile and listens on 127.0.0.1 or
# UNIX sockets only; every process it starts (nginx, backends, valgrind,
# strace, wrk) is stopped on exit, also on failure or Ctrl-C.

[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"

set -u
export LC_ALL=C

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
B=$build/bench
R=$B/profile
res=$top/bench/results
post_lua=$top/bench/post.lua

WORKLOADS=${WORKLOADS:-5B 64KiB}
CONTENDERS=${CONTENDERS:-return shm proxy fastcgi}
CG_CONC=${CG_CONC:-8}
CG_DURATION=${CG_DURATION:-3}
CG_ROUNDS=${CG_ROUNDS:-3}
CG_REP_MOVSB=${CG_REP_MOVSB:-0}
ST_CONC=${ST_CONC:-64}
ST_DURATION=${ST_DURATION:-3}
WARM=${WARM:-1}
PHASES=${PHASES:-callgrind strace}
LIMIT=${LIMIT:-900}
PORT_BASE=${PORT_BASE:-28570}
OUT=${OUT:-profile}
NGINX=${NGINX:-/usr/sbin/nginx}

T0=$(date +%s)

log() {
    printf '%s profile: %s\n' "$(date +%T)" "$*" >&2
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
    status)  echo $((PORT_BASE + 9)) ;;
    esac
}

label_of() {
    case $1 in
    return)  echo "return 200 / static" ;;
    shm)     echo "shm_pass" ;;
    proxy)   echo "proxy_pass (unix, keepalive)" ;;
    fastcgi) echo "fastcgi_pass (unix, libfcgi)" ;;
    esac
}

backend_of() {
    case $1 in
    return)  echo "" ;;
    shm)     echo "shm sidecar (bench/sidecar.c)" ;;
    proxy)   echo "backend nginx" ;;
    fastcgi) echo "FastCGI responder (bench/fcgi-responder.c)" ;;
    esac
}

# workload -> "PATH BYTES"
workload_of() {
    case $1 in
    5B)     echo "/5 5" ;;
    1KiB)   echo "/1k 1024" ;;
    64KiB)  echo "/64k 65536" ;;
    1MiB)   echo "/1m 1048576" ;;
    POST1MiB) echo "/echo 1048576" ;;
    *)      return 1 ;;
    esac
}

# wrk's POST script for a workload that posts (bench/run.sh's)
WRK_SCRIPT=""

set_wrk_script() {
    WRK_SCRIPT=""
    [ "$1" = POST1MiB ] && WRK_SCRIPT=$post_lua
    return 0
}


# ------------------------------------------------------------ processes

STARTED=""          # "name:pid" of everything started, for cleanup
TRACERS=""          # strace pids
WRKPID=""
PID_front="" PID_back="" PID_shm="" PID_fastcgi=""

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

# stop_pid PID SIGNAL: signal, wait up to 15 s (valgrind writes its last
# dump on exit), then SIGKILL it and the children it had
stop_pid() {
    local pid=$1 sig=$2 kids n k

    alive "$pid" || return 0
    kids=$(children "$pid")
    kill "-$sig" "$pid" 2>/dev/null
    n=150
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

stop_tracers() {
    local t

    for t in $TRACERS; do
        stop_pid "$t" INT
    done
    TRACERS=""
}

stop_all() {
    local e

    if alive "$WRKPID"; then
        kill -TERM "$WRKPID" 2>/dev/null
        wait "$WRKPID" 2>/dev/null
    fi
    WRKPID=""

    stop_tracers

    for e in $STARTED; do
        stop_pid "${e#*:}" TERM
        rm -f "$R/${e%%:*}.pid"
    done

    rm -f "$R"/*.sock
    STARTED=""
}

cleanup() {
    trap - EXIT INT TERM HUP
    stop_all
}

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# leftovers of an earlier run that was killed without its cleanup: only
# processes whose command line names our run directory
for f in "$R"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null)
    if alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null |
            grep -q "$R"; then
        log "stopping leftover pid $pid ($f)"
        stop_pid "$pid" TERM
    fi
    rm -f "$f"
done

# wait_for TENTHS TEST-COMMAND...
wait_for() {
    local n=$1

    shift
    while ! "$@"; do
        n=$((n - 1))
        [ $n -gt 0 ] || return 1
        sleep 0.1
    done
}

deadline() {
    [ $(( $(date +%s) - T0 )) -lt "$LIMIT" ] ||
        die "over the time limit of $LIMIT s (LIMIT)"
}


# ---------------------------------------------------------------- checks

for f in "$build/ngx_http_shm_module.so" "$build/libngxshm.a" \
         "$top/include/ngxshm.h"
do
    [ -e "$f" ] || die "$f is missing: run make first"
done

for c in "$NGINX" wrk spawn-fcgi curl cc valgrind callgrind_control \
         callgrind_annotate strace
do
    command -v "$c" > /dev/null ||
        die "$c is not installed (make profile installs it)"
done

for c in $CONTENDERS; do
    case $c in
    return|shm|proxy|fastcgi) ;;
    *) die "unknown contender \"$c\" (return shm proxy fastcgi)" ;;
    esac
done

for w in $WORKLOADS; do
    workload_of "$w" > /dev/null || die "unknown workload \"$w\""
done

# bind as nginx does (SO_REUSEADDR): a listener or a connection on the
# port makes nginx's bind() fail
for p in return shm proxy fastcgi uwsgi status; do
    perl -MIO::Socket::INET -e '
        IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],
                              Proto => "tcp", ReuseAddr => 1, Listen => 1)
            or exit 1' "$(port_of $p)" ||
        die "127.0.0.1:$(port_of $p) is in use (set PORT_BASE)"
done


# ----------------------------------------------------------------- build

rm -rf "$R"
mkdir -p "$R/front" "$R/back" "$R/www" "$R/cg" "$R/st" "$res"

CFLAGS_BENCH="-std=gnu11 -O2 -g -Wall -Wextra -D_GNU_SOURCE"

log "building the backends in $R"
cc $CFLAGS_BENCH -I"$top/include" -o "$R/ngxshm-bench" "$top/bench/sidecar.c" \
    "$build/libngxshm.a" -lpthread || die "cannot build bench/sidecar.c"
cc $CFLAGS_BENCH -o "$R/fcgi-responder" "$top/bench/fcgi-responder.c" \
    -lfcgi || die "cannot build bench/fcgi-responder.c (libfcgi-dev?)"

# the static bodies, the same bytes as bench/run.sh's
body() {
    head -c "$1" < <(yes abcdefghijklmnopqrstuvwxyz | tr -d '\n')
}
body 1024 > "$R/www/1k"
body 65536 > "$R/www/64k"
body 1048576 > "$R/www/1m"

user=""
[ "$(id -u)" = 0 ] && user="user root;"

# the configurations of bench/run.sh, default buffers, one front worker
fill() {
    sed -e "s|@BUFFERS_[A-Z]*@||" \
        -e "s|@BUILD@|$build|g" -e "s|@RUN@|$R|g" -e "s|@USER@|$user|g" \
        -e "s|@WORKERS@|1|g" \
        -e "s|@PORT_RETURN@|$(port_of return)|g" \
        -e "s|@PORT_SHM@|$(port_of shm)|g" \
        -e "s|@PORT_PROXY@|$(port_of proxy)|g" \
        -e "s|@PORT_FASTCGI@|$(port_of fastcgi)|g" \
        -e "s|@PORT_UWSGI@|$(port_of uwsgi)|g" "$1" > "$2"
}

fill "$top/bench/nginx-front.conf.in" "$R/front/nginx.conf.tmp"
fill "$top/bench/nginx-back.conf.in" "$R/back/nginx.conf"

# plus a server that answers the request counter, before the http
# block's closing brace
awk -v s="    server { listen 127.0.0.1:$(port_of status); location / { stub_status; } }" '
    { l[NR] = $0 }
    END {
        for (i = NR; i > 0 && l[i] != "}"; i--) ;
        for (j = 1; j <= NR; j++) { if (j == i) print s; print l[j] }
    }' "$R/front/nginx.conf.tmp" > "$R/front/nginx.conf"
rm -f "$R/front/nginx.conf.tmp"
grep -q stub_status "$R/front/nginx.conf" || die "cannot add the status server"

"$NGINX" -t -q -p "$R/front/" -c "$R/front/nginx.conf" \
    -e "$R/front/error.log" 2>&1 || die "bad front nginx configuration"
"$NGINX" -t -q -p "$R/back/" -c "$R/back/nginx.conf" -e "$R/back/error.log" \
    2>&1 || die "bad backend nginx configuration"


# ----------------------------------------------------------------- start

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

# the front answers on every port (a front that could not bind them all
# exits: then stop waiting)
front_up() {
    local p

    alive "$PID_front" || return 0
    for p in return shm proxy fastcgi status; do
        (exec 3<>"/dev/tcp/127.0.0.1/$(port_of $p)") 2>/dev/null || return 1
    done
}

# the callgrind command line for NAME: instrumentation off until a
# measured run turns it on.  Callgrind counts each iteration of a "rep
# movsb" as an instruction, so glibc's large copies (above 2 KiB or so)
# would count one instruction per byte where the CPU moves 32 or more
# bytes a cycle; with the thresholds out of reach glibc copies with its
# vector loop, whose instruction count is close to the copy's native cost.
cg() {
    local t=""

    [ "$CG_REP_MOVSB" = 0 ] &&
        t="GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4294967295"
    [ -n "$t" ] && t="$t:glibc.cpu.x86_rep_stosb_threshold=4294967295"
    echo "$(command -v env)" $t "$(command -v valgrind)" --tool=callgrind \
        --instr-atstart=no --callgrind-out-file="$R/cg/$1.%p"
}

# start_all CG: CG = "front" (the front under callgrind), "back" (the
# backends under callgrind) or "" (nothing under callgrind).  Under
# callgrind the nginx runs single-process (master_process off), so its
# one process is the worker; natively the front and the backend nginx
# have a master and one worker, as in bench/run.sh.
start_all() {
    local which=$1 vf="" vb="" fg="" bg="" n wait=50

    [ "$which" = front ] && { vf=$(cg front); fg="master_process off;"; }
    [ "$which" = back ] && vb=1 && bg="master_process off;"
    [ -n "$vf$vb" ] && wait=600

    # shellcheck disable=SC2046
    start shm "$R/shm.log" ${vb:+$(cg shm)} "$R/ngxshm-bench" -t 1 \
        "$R/shm.sock"
    wait_for $wait sock_up "$R/shm.sock" ||
        die "the shm sidecar did not start: $(tail -3 "$R/shm.log")"

    # shellcheck disable=SC2046
    start fastcgi "$R/fastcgi.log" spawn-fcgi -n -s "$R/fcgi.sock" -M 0600 \
        -b 1024 -- ${vb:+$(cg fastcgi)} "$R/fcgi-responder"
    wait_for $wait sock_up "$R/fcgi.sock" ||
        die "the FastCGI responder did not start: $(tail -3 "$R/fastcgi.log")"

    # shellcheck disable=SC2046
    start back "$R/back/stderr.log" ${vb:+$(cg back)} "$NGINX" \
        -p "$R/back/" -c "$R/back/nginx.conf" -e "$R/back/error.log" \
        -g "daemon off; $bg"
    wait_for $wait sock_up "$R/back.sock" ||
        die "the backend nginx did not start: $(tail -3 "$R/back/error.log")"

    # shellcheck disable=SC2086
    start front "$R/front/stderr.log" $vf "$NGINX" -p "$R/front/" \
        -c "$R/front/nginx.conf" -e "$R/front/error.log" \
        -g "daemon off; $fg"
    wait_for $wait front_up && alive "$PID_front" ||
        die "the front nginx did not start: $(tail -3 "$R/front/error.log")"

    if [ -n "$fg" ]; then
        FRONT_WORKER=$PID_front
    else
        n=50
        while FRONT_WORKER=$(children "$PID_front" | head -1) &&
              [ -z "$FRONT_WORKER" ] && [ $n -gt 0 ]
        do
            sleep 0.1
            n=$((n - 1))
        done
        [ -n "$FRONT_WORKER" ] || die "no front nginx worker"
    fi

    if [ -n "$bg" ]; then
        BACK_WORKER=$PID_back
    else
        n=50
        while BACK_WORKER=$(children "$PID_back" | head -1) &&
              [ -z "$BACK_WORKER" ] && [ $n -gt 0 ]
        do
            sleep 0.1
            n=$((n - 1))
        done
        [ -n "$BACK_WORKER" ] || die "no backend nginx worker"
    fi

    log "started: front nginx worker $FRONT_WORKER${vf:+ (callgrind)}," \
        "shm sidecar $PID_shm, backend nginx worker $BACK_WORKER," \
        "FastCGI responder $PID_fastcgi${vb:+ (the backends under callgrind)}"
}

backend_pid() {
    case $1 in
    shm)     echo "$PID_shm" ;;
    proxy)   echo "$BACK_WORKER" ;;
    fastcgi) echo "$PID_fastcgi" ;;
    esac
}


# ---------------------------------------------------------------- helpers

# check CONTENDER WORKLOAD: one request with curl; status, size, bytes
check() {
    local c=$1 w=$2 p bytes out

    read -r p bytes <<< "$(workload_of "$w")"
    set_wrk_script "$w"
    if [ "$w" = POST1MiB ]; then
        head -c "$bytes" /dev/zero | tr '\0' x > "$R/post.body"
        out=$(curl -sS -m 60 -o "$R/check.out" \
              -w '%{http_code} %{size_download}' \
              --data-binary @"$R/post.body" \
              -H 'Content-Type: application/octet-stream' \
              "http://127.0.0.1:$(port_of "$c")$p" 2>&1)
        [ "$out" = "200 $bytes" ] ||
            die "$c $w: got \"$out\", want \"200 $bytes\""
        return 0
    fi
    out=$(curl -sS -m 60 -o "$R/check.out" -w '%{http_code} %{size_download}' \
          "http://127.0.0.1:$(port_of "$c")$p" 2>&1)
    [ "$out" = "200 $bytes" ] ||
        die "$c $w: got \"$out\", want \"200 $bytes\""
    if [ "$bytes" = 5 ]; then
        [ "$(cat "$R/check.out")" = hello ] || [ "$c" != return ] ||
            die "$c $w: the body is not \"hello\""
    else
        cmp -s "$R/check.out" "$R/www/${p#/}" ||
            die "$c $w: the body is not the expected bytes"
    fi
}

# requests: the front's request counter (stub_status)
requests() {
    local n

    n=$(curl -sS -m 60 "http://127.0.0.1:$(port_of status)/" 2>/dev/null |
        awk 'NR == 3 { print $3 }')
    [ -n "$n" ] || die "cannot read the front's request counter"
    echo "$n"
}

# wrk_run CONN SECONDS URL OUTFILE
wrk_run() {
    timeout -k 5 $(($2 + 60)) wrk -t 1 -c "$1" -d "${2}s" --timeout 30s \
        ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$3" > "$4" 2>&1 &
    WRKPID=$!
    wait $WRKPID
    WRKPID=""
}

wrk_requests() {
    awk '/ requests in / { print $1 }' "$1"
}

wrk_errors() {
    awk '/Socket errors:/ { gsub(/[^0-9 ]/, " ");
                            for (i = 1; i <= NF; i++) e += $i }
         /Non-2xx or 3xx/ { e += $NF }
         END { print e + 0 }' "$1"
}

# cgctl PID ARGS...: callgrind_control, bounded
cgctl() {
    local pid=$1 out

    shift
    out=$(timeout -k 5 60 callgrind_control "$@" "$pid" 2>&1) ||
        die "callgrind_control $* $pid failed: $out"
}

# newest dump of callgrind process NAME.PID
newest_dump() {
    ls -t "$R/cg/$1.$2".* 2>/dev/null | head -1
}

dump_ir() {
    awk '/^summary:/ { print $2; exit }' "$1"
}

# top_functions ANNOTATION REQUESTS: the 6 functions with the most self
# cost, "name (object) Ir/req; ..."
top_functions() {
    awk -v n="$2" '
    /^-+$/ { dash++; next }
    dash == 6 && /\(/ && k < 6 {
        ir = $1; gsub(/,/, "", ir);
        s = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", s);
        obj = ""; if (match(s, /\[[^]]*\]$/)) {
            obj = substr(s, RSTART + 1, RLENGTH - 2); s = substr(s, 1, RSTART - 1);
            sub(/.*\//, "", obj); sub(/ +$/, "", s);
        }
        sub(/.*:/, "", s);
        printf "%s%s (%s) %.0f", (k ? "; " : ""), s, obj, ir / n;
        k++;
    }
    END { print "" }' "$1"
}

# copy_ir ANNOTATION: the self cost of glibc's memcpy/memmove/memset
copy_ir() {
    awk '/^-+$/ { dash++; next }
         dash == 6 && /\(/ && /:__(memcpy|memmove|memset|mempcpy)_/ {
             ir = $1; gsub(/,/, "", ir); t += ir }
         END { print t + 0 }' "$1"
}

CSV=$R/profile.csv
# value: Ir (callgrind) or calls (strace); failed: the calls that
# returned an error; detail: the top functions or the syscall's name
# copy: the Ir of that in memcpy/memmove/memset (callgrind)
echo "phase,process,contender,workload,conc,round,requests,wrk_requests,wrk_errors,value,failed,copy,detail" > "$CSV"

# cg_run PROCNAME PID CONTENDER WORKLOAD ROUND: one callgrind measurement
cg_run() {
    local name=$1 pid=$2 c=$3 w=$4 round=$5 p bytes url r0 r1 n wn f ir
    local top errs copy

    deadline
    read -r p bytes <<< "$(workload_of "$w")"
    set_wrk_script "$w"
    url="http://127.0.0.1:$(port_of "$c")$p"

    wrk_run "$CG_CONC" "$WARM" "$url" "$R/wrk.out"

    r0=$(requests)
    cgctl "$pid" -i on
    cgctl "$pid" -z
    wrk_run "$CG_CONC" "$CG_DURATION" "$url" "$R/wrk.out"
    cgctl "$pid" -d
    cgctl "$pid" -i off
    r1=$(requests)

    n=$((r1 - r0 - 1))
    wn=$(wrk_requests "$R/wrk.out")
    errs=$(wrk_errors "$R/wrk.out")
    [ -n "$wn" ] && [ "$n" -gt 0 ] ||
        die "wrk failed for $c $w: $(cat "$R/wrk.out")"

    f=$(newest_dump "$name" "$pid")
    [ -n "$f" ] || die "no callgrind dump of $name ($pid)"
    ir=$(dump_ir "$f")
    [ -n "$ir" ] || die "no Ir summary in $f"
    callgrind_annotate --auto=no --threshold=100 "$f" > "$f.txt" 2>&1 ||
        die "callgrind_annotate $f failed: $(head -3 "$f.txt")"
    top=$(top_functions "$f.txt" "$n")
    copy=$(copy_ir "$f.txt")
    mv "$f" "$R/cg/$name-$c-$w-$round.out"
    mv "$f.txt" "$R/cg/$name-$c-$w-$round.txt"

    echo "callgrind,$name,$c,$w,$CG_CONC,$round,$n,$wn,$errs,$ir,,$copy,$top" >> "$CSV"
    log "callgrind $name $c $w round $round: $n requests ($wn by wrk)," \
        "$(awk -v a="$ir" -v n="$n" 'BEGIN { printf "%.0f", a / n }') Ir/request" \
        "$([ "$errs" != 0 ] && echo ", $errs wrk errors")"
}

# strace_run CONTENDER WORKLOAD: strace -c on the front worker and on the
# backend during one wrk run
strace_run() {
    local c=$1 w=$2 p bytes url r0 r1 n wn errs bp proc pid f t

    deadline
    read -r p bytes <<< "$(workload_of "$w")"
    set_wrk_script "$w"
    url="http://127.0.0.1:$(port_of "$c")$p"

    wrk_run "$ST_CONC" "$WARM" "$url" "$R/wrk.out"
    r0=$(requests)

    bp=$(backend_pid "$c")
    for proc in front ${bp:+back}; do
        pid=$FRONT_WORKER
        [ "$proc" = back ] && pid=$bp
        f=$R/st/$proc-$c-$w
        strace -c -f -qq -o "$f" -p "$pid" 2> "$f.err" &
        t=$!
        TRACERS="$TRACERS $t"
        # attached when the process's TracerPid is strace
        wait_for 100 tracer_is "$pid" "$t" ||
            die "strace did not attach to $pid: $(cat "$f.err")"
    done
    sleep 0.3

    wrk_run "$ST_CONC" "$ST_DURATION" "$url" "$R/wrk.out"
    stop_tracers
    r1=$(requests)

    n=$((r1 - r0 - 1))
    wn=$(wrk_requests "$R/wrk.out")
    errs=$(wrk_errors "$R/wrk.out")
    [ -n "$wn" ] && [ "$n" -gt 0 ] ||
        die "wrk failed for $c $w: $(cat "$R/wrk.out")"

    for proc in front ${bp:+back}; do
        f=$R/st/$proc-$c-$w
        [ -s "$f" ] || die "strace wrote no summary for $proc ($c $w): $(cat "$f.err")"
        # "calls failed name" per syscall, from the strace -c table
        awk '/^-/ { d++; next }
             (d == 1 || d == 2) && NF >= 5 {
                 printf "%s %s %s\n", $4, (NF >= 6 ? $5 : 0), $NF }' "$f" |
        while read -r calls failed name; do
            echo "strace,$proc,$c,$w,$ST_CONC,1,$n,$wn,$errs,$calls,$failed,,$name"
        done >> "$CSV"
    done

    log "strace $c $w: $n requests ($wn by wrk), front" \
        "$(awk -v n="$n" '/^-/ { d++; next } d == 2 { printf "%.2f", $4 / n }' \
           "$R/st/front-$c-$w") syscalls/request${bp:+, backend $(awk -v n="$n" \
           '/^-/ { d++; next } d == 2 { printf "%.2f", $4 / n }' \
           "$R/st/back-$c-$w")}"
}

tracer_is() {
    local tp

    tp=$(awk '/^TracerPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    [ "$tp" = "$2" ]
}

src_rev=$(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)
mod_time=$(date -u -r "$build/ngx_http_shm_module.so" '+%Y-%m-%d %H:%M UTC' 2>/dev/null)
lib_time=$(date -u -r "$build/libngxshm.a" '+%Y-%m-%d %H:%M UTC' 2>/dev/null)


# ------------------------------------------------------------------ runs

case " $PHASES " in
*" callgrind "*)
    log "phase 1: the front nginx under callgrind"
    start_all front
    for c in $CONTENDERS; do for w in $WORKLOADS; do check "$c" "$w"; done; done
    for w in $WORKLOADS; do
        for round in $(seq 1 "$CG_ROUNDS"); do
            for c in $CONTENDERS; do
                cg_run front "$PID_front" "$c" "$w" "$round"
            done
        done
    done
    stop_all

    log "phase 2: the backends under callgrind"
    start_all back
    for c in $CONTENDERS; do for w in $WORKLOADS; do check "$c" "$w"; done; done
    for w in $WORKLOADS; do
        for round in $(seq 1 "$CG_ROUNDS"); do
            for c in $CONTENDERS; do
                case $c in
                shm)     cg_run shm "$PID_shm" "$c" "$w" "$round" ;;
                proxy)   cg_run back "$PID_back" "$c" "$w" "$round" ;;
                fastcgi) cg_run fastcgi "$PID_fastcgi" "$c" "$w" "$round" ;;
                esac
            done
        done
    done
    stop_all
    ;;
esac

case " $PHASES " in
*" strace "*)
    log "phase 3: system calls (strace -c), everything native"
    start_all ""
    for c in $CONTENDERS; do for w in $WORKLOADS; do check "$c" "$w"; done; done
    for w in $WORKLOADS; do
        for c in $CONTENDERS; do
            strace_run "$c" "$w"
        done
    done
    stop_all
    ;;
esac

errlines=$(cat "$R/front/error.log" "$R/back/error.log" 2>/dev/null |
           grep -E '\[(alert|crit|emerg|error)\]' | sort | uniq -c | sort -rn |
           head -5)
log "all processes stopped"


# --------------------------------------------------------------- results

csv=$res/$OUT.csv
md=$res/$OUT.md
cp "$CSV" "$csv"

elapsed=$(( $(date +%s) - T0 ))
host_cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
nginx_v=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')

label_map=""
for c in return shm proxy fastcgi; do
    label_map="$label_map$c=$(label_of $c);"
done

{
    echo "# Instructions and system calls per request"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($host_cpu)," \
         "Linux $(uname -r), $nginx_v, $(valgrind --version), $(strace -V | head -1)."
    echo "Source: $src_rev (module built $mod_time, library built $lib_time)."
    echo "Made by bench/profile.sh (make profile) in $((elapsed / 60)) min $((elapsed % 60)) s."
    echo
    echo "The contenders are configured as in bench/run.sh (nginx's default" \
         "buffers, UNIX sockets, keepalive to the backend nginx, one front" \
         "worker, one shm sidecar loop thread). Requests per run: the front's" \
         "stub_status counter (requests wrk had in flight when it stopped" \
         "included)."
} > "$md"

if grep -q '^callgrind,' "$CSV"; then
    {
        echo
        echo "## Instructions per request (callgrind, wrk -c $CG_CONC, $CG_DURATION s)"
        echo
        echo "Ir = instructions executed in user space (nginx, the module, libc," \
             "the backend and its libraries; not the kernel), from" \
             "valgrind --tool=callgrind with instrumentation switched on only" \
             "for the measured run, after a $WARM s warm-up, divided by the" \
             "requests of the run. The front is measured with the backends" \
             "native, the backends with the front native; the process under" \
             "callgrind runs some 50 times slower than its peers, so it finds" \
             "more work per wake-up than it would natively. Median of" \
             "$CG_ROUNDS round(s)."
        echo
        echo "What callgrind does not see: the kernel. proxy_pass and" \
             "fastcgi_pass move the body with recv/writev (the kernel copies" \
             "it twice), the static files go out with sendfile; shm_pass" \
             "copies the body in user space (sidecar into the ring, the ring" \
             "into nginx's buffers), so its copies are counted here and the" \
             "others' are not: see the memcpy column and the system calls" \
             "below. $([ "$CG_REP_MOVSB" = 0 ] && echo "glibc ran with" \
             "GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4294967295" \
             "(and the same for rep stosb): callgrind counts a \"rep movsb\"" \
             "as one instruction per byte, the vector loop used instead costs" \
             "about 6,200 Ir per 64 KiB copied, close to the copy's native" \
             "cycles.")"
    } >> "$md"

    awk -F, -v labels="$label_map" -v worder="$WORKLOADS" -v corder="$CONTENDERS" '
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
    function fmt(x,    t, r) {
        if (x == "") return "-";
        t = sprintf("%.0f", x); r = "";
        while (length(t) > 3) { r = "," substr(t, length(t) - 2) r; t = substr(t, 1, length(t) - 3) }
        return t r;
    }
    BEGIN {
        n = split(labels, L, ";");
        for (i = 1; i <= n; i++) { split(L[i], kv, "="); name[kv[1]] = kv[2]; }
    }
    $1 == "callgrind" {
        side = ($2 == "front") ? "f" : "b";
        v[$4, $3, side] = v[$4, $3, side] " " ($10 / $7);
        req[$4, $3, side] += $7;
        cp[$4, $3, side] = cp[$4, $3, side] " " ($12 / $7);
        top[$4, $3, side] = $13;
    }
    END {
        nw = split(worder, W, " "); nc = split(corder, C, " ");
        for (i = 1; i <= nw; i++) {
            w = W[i];
            printf "\n### %s\n\n", w;
            print "| contender | front Ir/req | backend Ir/req | total Ir/req | total x shm | of the total: memcpy/memset | requests measured (front / backend) |";
            print "|-----------|-------------:|---------------:|-------------:|------------:|------------:|------------:|";
            s = "";
            if ((w, "shm", "f") in v)
                s = median(v[w, "shm", "f"]) + median(v[w, "shm", "b"]);
            for (j = 1; j <= nc; j++) {
                c = C[j];
                if (!((w, c, "f") in v) && !((w, c, "b") in v)) continue;
                f = median(v[w, c, "f"]); b = median(v[w, c, "b"]);
                t = f + b;
                m = median(cp[w, c, "f"]) + median(cp[w, c, "b"]);
                printf "| %s | %s | %s | %s | %s | %s | %s%s |\n", name[c], fmt(f),
                    (c == "return") ? "(none)" : fmt(b), fmt(t),
                    (s > 0) ? sprintf("%.2f", t / s) : "", fmt(m),
                    fmt(req[w, c, "f"]), (c == "return") ? "" : " / " fmt(req[w, c, "b"]);
            }
        }
        printf "\nWhere the instructions go: the six functions with the most self cost";
        printf " (object, Ir/request), last round; 0x... are nginx'"'"'s static functions,";
        printf " which the Debian binary has no symbols for.\n";
        for (i = 1; i <= nw; i++) {
            w = W[i];
            printf "\n#### %s\n\n", w;
            print "| process | top functions (self Ir/request) |";
            print "|---------|------------------------------|";
            for (j = 1; j <= nc; j++) {
                c = C[j];
                if ((w, c, "f") in top)
                    printf "| front, %s | %s |\n", name[c], top[w, c, "f"];
            }
            for (j = 1; j <= nc; j++) {
                c = C[j];
                if ((w, c, "b") in top)
                    printf "| backend of %s | %s |\n", name[c], top[w, c, "b"];
            }
        }
    }' "$CSV" >> "$md"
fi

if grep -q '^strace,' "$CSV"; then
    {
        echo
        echo "## System calls per request (strace -c -f, wrk -c $ST_CONC, $ST_DURATION s)"
        echo
        echo "strace -c -f attached to the front nginx worker and to the backend" \
             "(the shm sidecar with all its threads, the backend nginx worker," \
             "the FastCGI responder), everything native, after a $WARM s warm-up." \
             "strace stops the traced process at every system call, which slows" \
             "it down and so batches more requests per wake-up than an untraced" \
             "run would: the counts are of the same order as untraced, not exact." \
             "Calls per request by name, those of at least 0.01 per request," \
             "with those that failed (EAGAIN mostly). Each run opens $ST_CONC" \
             "new connections: accept4, setsockopt, close and the like at" \
             "about $ST_CONC / requests are theirs."
    } >> "$md"

    awk -F, -v labels="$label_map" -v worder="$WORKLOADS" -v corder="$CONTENDERS" '
    BEGIN {
        n = split(labels, L, ";");
        for (i = 1; i <= n; i++) { split(L[i], kv, "="); name[kv[1]] = kv[2]; }
    }
    $1 == "strace" {
        k = $4 SUBSEP $3 SUBSEP $2;
        req[k] = $7;
        if ($13 == "total") { tot[k] = $10; next }
        r = $10 / $7;
        if (r >= 0.01) {
            # sorted later: the strace table is sorted by time, not calls
            cnt[k]++; nm[k, cnt[k]] = $13; val[k, cnt[k]] = r;
            fl[k, cnt[k]] = $11 / $7;
        }
    }
    function sorted(k,    i, j, t, s) {
        for (i = 2; i <= cnt[k]; i++)
            for (j = i; j > 1 && val[k, j] > val[k, j - 1]; j--) {
                t = val[k, j]; val[k, j] = val[k, j - 1]; val[k, j - 1] = t;
                t = nm[k, j]; nm[k, j] = nm[k, j - 1]; nm[k, j - 1] = t;
                t = fl[k, j]; fl[k, j] = fl[k, j - 1]; fl[k, j - 1] = t;
            }
        s = "";
        for (i = 1; i <= cnt[k]; i++)
            s = s sprintf("%s%s %.2f%s", (s == "" ? "" : ", "), nm[k, i], val[k, i],
                          fl[k, i] >= 0.01 ? sprintf(" (%.2f failed)", fl[k, i]) : "");
        return s;
    }
    END {
        nw = split(worder, W, " "); nc = split(corder, C, " ");
        for (i = 1; i <= nw; i++) {
            w = W[i];
            printf "\n### %s\n\n", w;
            print "| contender | requests | front syscalls/req | backend syscalls/req | total | front: by name, per request | backend: by name, per request |";
            print "|-----------|---------:|-------------------:|---------------------:|------:|-----------------------------|-------------------------------|";
            for (j = 1; j <= nc; j++) {
                c = C[j]; kf = w SUBSEP c SUBSEP "front"; kb = w SUBSEP c SUBSEP "back";
                if (!(kf in req)) continue;
                f = tot[kf] / req[kf];
                b = (kb in tot) ? tot[kb] / req[kb] : 0;
                printf "| %s | %d | %.2f | %s | %.2f | %s | %s |\n", name[c], req[kf], f,
                    (kb in tot) ? sprintf("%.2f", b) : "(none)", f + b,
                    sorted(kf), (kb in tot) ? sorted(kb) : "";
            }
        }
    }' "$CSV" >> "$md"
fi

if [ -n "$errlines" ]; then
    {
        echo
        echo "## Errors in the nginx error logs (count, line)"
        echo
        echo '```'
        echo "$errlines"
        echo '```'
    } >> "$md"
fi

log "done in $((elapsed / 60)) min $((elapsed % 60)) s: $md, $csv"
cat "$md"
