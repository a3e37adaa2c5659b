#!/bin/sh
# Install what the build and the tests need, only when it is missing.
# Usage: tools/deps.sh [bench | fuzz]

pkgs="nginx nginx-dev gcc make perl curl libc6-dev wrk"
cmds="nginx gcc make prove curl wrk"

# bench: wrk, the FastCGI contender (libfcgi, spawn-fcgi), the plot, and
# the uwsgi contender (uwsgi-core with its symcall plugin, and the headers
# that uwsgi.h includes, to build the C handler against "uwsgi --dot-h");
# valgrind and strace for bench/profile.sh
[ "$1" = bench ] && pkgs="$pkgs libfcgi-dev spawn-fcgi gnuplot-nox \
    valgrind strace uwsgi-core libcap-dev libpcre3-dev libssl-dev uuid-dev \
    zlib1g-dev"

# fuzz: clang with libFuzzer and the sanitizer runtimes (libclang-rt-dev,
# only recommended by clang), llvm-symbolizer for readable reports
[ "$1" = fuzz ] && pkgs="$pkgs clang libclang-rt-dev llvm"

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        missing="$missing $p"
done

[ -n "$missing" ] || exit 0

if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages:$missing (run as root to install)" >&2
    exit 1
fi

echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing
