#!/bin/sh
# Start or stop a local nginx with ngx_http_shm_module in front of the
# echo sidecar, everything under build/run/.  Used by "make run" and
# "make stop".
# Usage: tools/run.sh start|stop    (PORT=8080 by default)

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
run=$build/run
port=${PORT:-8080}
nginx=${NGINX:-/usr/sbin/nginx}

alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

# wait_gone PIDFILE SECONDS: wait until the process of PIDFILE exits
wait_gone() {
    n=$(($2 * 10))
    while alive "$1" && [ "$n" -gt 0 ]; do
        sleep 0.1
        n=$((n - 1))
    done
    ! alive "$1"
}

start() {
    if alive "$run/nginx.pid"; then
        echo "run: already running: nginx pid $(cat "$run/nginx.pid")," \
             "http://127.0.0.1:$port/ (make stop to stop it)"
        exit 0
    fi

    for f in "$build/ngx_http_shm_module.so" "$build/examples/ngxshm-echo"; do
        if [ ! -e "$f" ]; then
            echo "run: $f is missing, run make first" >&2
            exit 1
        fi
    done

    mkdir -p "$run"

    user=""
    [ "$(id -u)" = 0 ] && user="user root;"

    cat > "$run/nginx.conf" <<EOF
# written by tools/run.sh
load_module $build/ngx_http_shm_module.so;
$user
pid $run/nginx.pid;
error_log $run/error.log info;

events {}

http {
    access_log $run/access.log;
    client_body_temp_path $run/client_body_temp;
    proxy_temp_path $run/proxy_temp;
    fastcgi_temp_path $run/fastcgi_temp;
    uwsgi_temp_path $run/uwsgi_temp;
    scgi_temp_path $run/scgi_temp;
    shm_temp_path $run/shm_temp;

    server {
        listen 127.0.0.1:$port;
        server_name localhost;

        location / {
            shm_pass unix:$run/echo.sock;
        }
    }
}
EOF

    if ! alive "$run/echo.pid"; then
        rm -f "$run/echo.sock"
        nohup "$build/examples/ngxshm-echo" "$run/echo.sock" \
            > "$run/echo.log" 2>&1 < /dev/null &
        echo $! > "$run/echo.pid"

        n=50
        while [ ! -S "$run/echo.sock" ] && [ "$n" -gt 0 ]; do
            alive "$run/echo.pid" || break
            sleep 0.1
            n=$((n - 1))
        done

        if [ ! -S "$run/echo.sock" ]; then
            echo "run: the echo sidecar did not start, see $run/echo.log:" >&2
            tail -5 "$run/echo.log" >&2
            exit 1
        fi
    fi

    if ! "$nginx" -p "$run/" -c "$run/nginx.conf" -e "$run/error.log"; then
        echo "run: nginx did not start, see $run/error.log" >&2
        exit 1
    fi

    n=50
    while ! alive "$run/nginx.pid" && [ "$n" -gt 0 ]; do
        sleep 0.1
        n=$((n - 1))
    done

    echo "run: nginx pid $(cat "$run/nginx.pid") on 127.0.0.1:$port," \
         "echo sidecar pid $(cat "$run/echo.pid")"
    echo "run: try:  curl -d hello 127.0.0.1:$port/"
    echo "run:       curl -i -H 'X-Echo-Headers: 1' 127.0.0.1:$port/a?b=c"
    echo "run: logs: $run/error.log $run/echo.log"
    echo "run: stop: make stop"
}

stop() {
    stopped=""

    if alive "$run/nginx.pid"; then
        kill -QUIT "$(cat "$run/nginx.pid")"
        if ! wait_gone "$run/nginx.pid" 10; then
            kill -TERM "$(cat "$run/nginx.pid")"
            wait_gone "$run/nginx.pid" 5
        fi
        stopped="$stopped nginx"
    fi
    rm -f "$run/nginx.pid"

    if alive "$run/echo.pid"; then
        kill -TERM "$(cat "$run/echo.pid")"
        if ! wait_gone "$run/echo.pid" 10; then
            kill -KILL "$(cat "$run/echo.pid")"
        fi
        stopped="$stopped echo"
    fi
    rm -f "$run/echo.pid"

    echo "run: stopped:${stopped:- nothing was running}"
}

case "$1" in
start)  start ;;
stop)   stop ;;
*)      echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
