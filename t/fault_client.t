#!/usr/bin/perl

# Clients that go away: in the middle of a download (buffered or not),
# while the sidecar holds its answer or reads the request body, and in
# the middle of sending the body to nginx.  The sidecar is told of every
# stream it had (a cancel), never sees a request nginx had not passed
# on, and the same channel serves a burst afterwards with the worker's
# descriptors and memory back where they were and no stream left over.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);
use ShmTest;
use ShmFault;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 1;

events {}

http {
    client_max_body_size 100m;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_read_timeout 20s;
            shm_send_timeout 20s;
        }

        location /unbuffered/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffering off;
            shm_read_timeout 20s;
            shm_send_timeout 20s;
        }
    }
}
EOF

$t->asan_options('quarantine_size_mb=16');

my $N = 5;      # clients of each kind

$t->plan(15);

my $sock = $t->testdir() . '/echo.sock';
my $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
$t->run();

my $p = port(0);
my $MiB = 1024 * 1024;
my ($worker) = $t->worker_pids();
my ($st, $h, $body);

my ($ok, @bad) = burst($p, 200, 10, '/warm');
is($ok, 200, 'warm up') or diag(join ', ', @bad);

my @seg0 = segments($worker);

# the baseline once the warm-up's client connections are closed
my $wfd0 = fds($worker);

for (1 .. 20) {
    select(undef, undef, undef, 0.05);
    my $f = fds($worker);
    $wfd0 = $f if $f && $f->{total} < $wfd0->{total};
}

my $sfd0 = fds($echo->{pid});
my $rss0 = proc_rss_kb($worker);
my $srss0 = proc_rss_kb($echo->{pid});

# downloads: 64 MiB, the client reads 256 KiB and goes away, half of
# them with a reset

for my $loc ('/', '/unbuffered/') {
    for my $i (1 .. $N) {
        my $s = stream_start($p, "GET ${loc}dl/$i HTTP/1.1\r\n"
            . "Host: localhost\r\nConnection: close\r\n"
            . "X-Echo-Size: " . 64 * $MiB . "\r\nX-Echo-Pace-Ms: 5\r\n\r\n",
            256 * 1024, 10);
        away($s->{s}, $i % 2);
    }
}

ok(wait_until(sub { echo_lines($t, $echo, 'cancel', qr{ /(?:unbuffered/)?dl/})
                    == 2 * $N }, 10),
   'download: the sidecar was told of each');

# the sidecar holds its answer (it has read none of a 16 MiB body), or
# echoes the body slowly, when the client goes away

my $big = 'b' x (16 * $MiB);

for my $i (1 .. $N) {
    my $s = http($p, "POST /held/$i HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nX-Echo-Delay-Ms: 5000\r\n"
        . "Content-Length: " . length($big) . "\r\n\r\n$big", start => 1,
        timeout => 20);
    wait_until(sub { echo_lines($t, $echo, 'start', qr{ /held/$i$}) }, 10);
    away($s, $i % 2);
}

for my $i (1 .. $N) {
    my $s = stream_start($p, "POST /unbuffered/slow/$i HTTP/1.1\r\n"
        . "Host: localhost\r\nConnection: close\r\nX-Echo-Pace-Ms: 10\r\n"
        . "Content-Length: " . length($big) . "\r\n\r\n$big", 256 * 1024, 20);
    away($s->{s}, $i % 2);
}

ok(wait_until(sub { echo_lines($t, $echo, 'cancel', qr{ /held/}) == $N }, 10),
   'held answer: the sidecar was told of each');
ok(wait_until(sub { echo_lines($t, $echo, 'cancel', qr{/slow/}) == $N }, 10),
   'body read slowly: the sidecar was told of each');

# in the middle of sending the body to nginx: nginx reads a body whole
# before it passes the request on, so the sidecar never sees these

$t->mark_log();

for my $i (1 .. $N) {
    my $s = http($p, "POST /partial/$i HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nContent-Length: " . 8 * $MiB . "\r\n\r\n"
        . ('p' x $MiB), start => 1);
    sleep(0.1);
    away($s, $i % 2);
}

ok($t->wait_log(qr/client prematurely closed connection/, 5),
   'partial body: nginx saw the client go');
is(scalar(echo_lines($t, $echo, 'start', qr{/partial/})), 0,
   'partial body: never passed on');

# afterwards: the same channel serves, nothing is left over

($ok, @bad) = burst($p, 200, 10, '/after');
is($ok, 200, 'after: 200 requests served') or diag(join ', ', @bad);

is(join(' ', segments($worker)), "@seg0", 'after: the same channel');

my $wfd1 = wait_until(sub {
    my $f = fds($worker);
    $f->{total} <= $wfd0->{total} ? $f : undef }, 5) || fds($worker);
my $sfd1 = fds($echo->{pid});
my $rss1 = proc_rss_kb($worker);
my $srss1 = proc_rss_kb($echo->{pid});

note("worker rss $rss0 -> $rss1 KiB, sidecar rss $srss0 -> $srss1 KiB, "
     . "worker fds $wfd0->{total} -> $wfd1->{total}, "
     . "sidecar fds $sfd0->{total} -> $sfd1->{total}");

ok($wfd1->{total} <= $wfd0->{total}, 'after: worker descriptors as before')
    or diag("worker fds $wfd0->{total} -> $wfd1->{total}");
is($sfd1->{total}, $sfd0->{total}, 'after: sidecar descriptors as before');
# under ASan freed memory waits in a quarantine of 16 MiB
my $slack = $t->asan() ? 8192 + 24576 : 8192;

cmp_ok($rss1 - $rss0, '<', $slack, 'after: worker rss grew within bounds');
cmp_ok($srss1 - $srss0, '<', $slack,
       'after: sidecar rss grew within bounds');
is(join(' ', $t->worker_pids()), $worker, 'after: the same worker');

$t->mark_log();
is($t->kill_sidecar($echo, 'TERM'), 0, 'graceful stop: exit status 0');
ok($t->wait_log(qr/sidecar \S+ went away, channel closed/, 2),
   'nginx closed the channel: no stream left on it');


# close a client connection: with a reset (SO_LINGER 0) or a FIN
sub away {
    my ($s, $reset) = @_;

    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $reset;
    close $s;
}
