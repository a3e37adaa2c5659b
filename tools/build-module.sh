#!/bin/bash
# Build ngx_http_shm_module.so against Debian's nginx-dev.
# Usage: tools/build-module.sh OUTDIR [EXTRA_CC_OPT [EXTRA_LD_OPT]]
set -e

out=$1
ccopt=${2:-}
ldopt=${3:-}
top=$(cd "$(dirname "$0")/.." && pwd)
src=/usr/share/nginx/src
work=$out/nginx-src

mkdir -p "$out"

stamp="$work/.stamp"
want="$ccopt|$ldopt|$(cat "$top/src/module/config" | md5sum)"

if [ ! -f "$stamp" ] || [ ! -f "$work/objs/Makefile" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -rf "$work"
    cp -r "$src" "$work"
    . "$src/conf_flags"
    (cd "$work" && ./configure "${NGX_CONF_FLAGS[@]}" \
        --with-cc-opt="-g -O2 -fPIC -Werror $ccopt" \
        --with-ld-opt="-fPIC $ldopt" \
        --add-dynamic-module="$top/src/module" > configure.log 2>&1) || {
        tail -30 "$work/configure.log"; exit 1; }
    echo "$want" > "$stamp"
fi

make -s -C "$work" -f objs/Makefile modules
cp "$work/objs/ngx_http_shm_module.so" "$out/.ngx_http_shm_module.so.tmp"
mv -f "$out/.ngx_http_shm_module.so.tmp" "$out/ngx_http_shm_module.so"
