#!/bin/sh
# Install what the build and the tests need, only when it is missing.
# Usage: tools/deps.sh [bench]

pkgs="nginx nginx-dev gcc make perl curl libc6-dev"
cmds="nginx gcc make prove curl"

[ "$1" = bench ] && pkgs="$pkgs wrk libfcgi-dev spawn-fcgi gnuplot-nox"

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
