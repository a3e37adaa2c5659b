#!/usr/bin/perl

# A sidecar that is not there, goes away, comes back: 502 at once with an
# [error] naming the socket, requests in flight fail fast when it is
# killed, a graceful stop lets them finish, and a new sidecar is used
# without touching nginx.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
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
            shm_connect_timeout 1s;
            shm_read_timeout 10s;
        }
    }
}
EOF

$t->plan(18);
$t->run();

my $p = port(0);
my $sock = $t->testdir() . '/echo.sock';
my ($st, $h, $b, $t0);

# no socket file at all

$t->mark_log();
$t0 = time();
($st, $h, $b) = parse_response(http_get($p, '/none'));
is($st, 502, 'no sidecar: 502');
cmp_ok(time() - $t0, '<', 1, 'no sidecar: at once');
ok($t->wait_log(qr/\[error\].*\Q$sock\E/, 2), 'no sidecar: error names socket');

# a stale socket file nobody listens on

my $stale = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $sock)
    or die "stale socket: $!\n";
close $stale;

$t->mark_log();
$t0 = time();
($st, $h, $b) = parse_response(http_get($p, '/stale'));
is($st, 502, 'stale socket: 502');
cmp_ok(time() - $t0, '<', 1, 'stale socket: at once');
ok($t->wait_log(qr/\[error\].*\Q$sock\E/, 2),
   'stale socket: error names socket');

# the sidecar starts: served without touching nginx

my $echo = $t->run_sidecar('ngxshm-echo', $sock);

($st, $h, $b) = parse_response(http_post($p, '/up', 'up'));
is($st, 200, 'sidecar started: 200');
is($b, 'up', 'sidecar started: body');

# killed with requests in flight: they fail within 1 s

my @s = map {
    http($p, "GET /wait/$_ HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\nX-Echo-Delay-Ms: 5000\r\n\r\n",
         start => 1);
} 1 .. 4;

sleep(0.5);
$t->mark_log();
$t->kill_sidecar($echo, 'KILL');
$t0 = time();

my @st = map { (parse_response(http_end($_, timeout => 8)))[0] // 'none' } @s;
my $el = time() - $t0;

is("@st", '502 502 502 502', 'killed: requests in flight get 502');
cmp_ok($el, '<', 1, 'killed: within 1 s');
ok($t->wait_log(qr/\[error\].*\Q$sock\E/, 2), 'killed: error names socket');

$t0 = time();
($st, $h, $b) = parse_response(http_get($p, '/dead'));
is($st, 502, 'killed: next request 502');
cmp_ok(time() - $t0, '<', 1, 'killed: next request at once');

# restarted

$echo = $t->run_sidecar('ngxshm-echo', $sock);

($st, $h, $b) = parse_response(http_post($p, '/again', 'again'));
is("$st $b", '200 again', 'restarted: served');

# a graceful stop: requests in flight finish, then nothing listens

@s = map {
    http($p, "GET /drain/$_ HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\nX-Echo-Delay-Ms: 1000\r\n\r\n",
         start => 1);
} 1 .. 2;

sleep(0.3);
my $rc = $t->kill_sidecar($echo, 'TERM');

@st = map { (parse_response(http_end($_)))[0] // 'none' } @s;
is("@st", '200 200', 'graceful stop: requests in flight finish');
is($rc, 0, 'graceful stop: exit status 0');

($st, $h, $b) = parse_response(http_get($p, '/stopped'));
is($st, 502, 'graceful stop: next request 502');

$echo = $t->run_sidecar('ngxshm-echo', $sock);

($st, $h, $b) = parse_response(http_get($p, '/last'));
is($st, 200, 'restarted again: served');
