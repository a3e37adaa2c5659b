#!/usr/bin/perl

# shm_read_timeout: a slow sidecar gets 504, its late answer is dropped
# without harm and the channel goes on; shm_connect_timeout: a sidecar
# that accepts but never answers the handshake fails the request.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use ShmTest;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 1;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_read_timeout 1s;
        }

        location /stopped {
            shm_pass unix:%%TESTDIR%%/stopped.sock;
            shm_connect_timeout 1s;
            shm_read_timeout 1s;
        }
    }
}
EOF

$t->plan(12);
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
my $stopped = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/stopped.sock');
$t->run();

my $p = port(0);
my ($st, $h, $b, $t0, $el);

($st, $h, $b) = parse_response(http_post($p, '/fast', 'fast',
                                         'X-Echo-Delay-Ms' => 300));
is("$st $b", '200 fast', 'delay below the timeout: 200');

$t->mark_log();
$t0 = time();
($st, $h, $b) = parse_response(http_get($p, '/slow',
                                        'X-Echo-Delay-Ms' => 3000));
$el = time() - $t0;
is($st, 504, 'read timeout: 504');
ok($el > 0.8 && $el < 2.5, 'read timeout: after about 1 s')
    or diag("took $el s");
ok($t->wait_log(qr/\[error\].*timed out/, 2), 'read timeout: error logged');

($st, $h, $b) = parse_response(http_post($p, '/next', 'next'));
is("$st $b", '200 next', 'next request served');

# the sidecar answers the timed out request now; nginx drops it quietly

sleep(2.5);

($st, $h, $b) = parse_response(http_post($p, '/late', 'late'));
is("$st $b", '200 late', 'served after the late answer');
unlike($t->read_log(), qr/channel closed|violation/,
       'late answer did not close the channel');

# several timeouts in a row, interleaved with good requests

my @s = map {
    http($p, "GET /many/$_ HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\nX-Echo-Delay-Ms: 2000\r\n\r\n",
         start => 1);
} 1 .. 5;

($st, $h, $b) = parse_response(http_post($p, '/between', 'between'));
is("$st $b", '200 between', 'served while others wait');

my @st = map { (parse_response(http_end($_)))[0] // 'none' } @s;
is("@st", '504 504 504 504 504', 'five read timeouts');

# a sidecar that never answers the handshake

$t->kill_sidecar($stopped, 'STOP');

$t0 = time();
($st, $h, $b) = parse_response(http_get($p, '/stopped'));
$el = time() - $t0;
like($st, qr/^50[24]$/, 'handshake timeout: 502 or 504');
ok($el > 0.8 && $el < 2.5, 'handshake timeout: after about 1 s')
    or diag("took $el s");

$t->kill_sidecar($stopped, 'CONT');

($st, $h, $b) = parse_response(http_post($p, '/stopped/cont', 'cont'));
is("$st $b", '200 cont', 'sidecar continued: served');
