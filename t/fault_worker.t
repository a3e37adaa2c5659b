#!/usr/bin/perl

# An nginx worker is killed (SIGKILL) with requests in flight, three
# times: the master starts a new one, which serves; the sidecar sees the
# channel die, tells the handlers of its requests (a cancel) and frees
# it (its descriptors and segment mappings return to their baseline); no
# segment outlives the two processes, also when both are killed; no
# System V segment is ever made.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use ShmTest;
use ShmFault;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 1;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_read_timeout 20s;
        }
    }
}
EOF

$t->allow_log(qr/worker process \d+ exited on signal 9/);

my $N = 3;

$t->plan(10 * $N + 5);

my $sock = $t->testdir() . '/echo.sock';
my $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
$t->run();

my $p = port(0);
my $base = fds($echo->{pid});
my ($st, $h, $body);
my @allpids = ($t->nginx_pid(), $echo->{pid});

for my $k (1 .. $N) {
    my ($worker) = $t->worker_pids();
    push @allpids, $worker;

    ($st, $h, $body) = parse_response(http_post($p, "/open/$k", 'open'));
    is("$st $body", '200 open', "kill $k: served");

    my @seg = segments($worker);
    is(fds($echo->{pid})->{total}, $base->{total} + 3,
       "kill $k: the sidecar holds one channel (3 descriptors)");

    # in flight: answers held back, and a long streamed one

    my @s = map {
        http($p, "GET /held/$k/$_ HTTP/1.1\r\nHost: localhost\r\n"
                 . "Connection: close\r\nX-Echo-Delay-Ms: 4000\r\n\r\n",
             start => 1);
    } 1 .. 5;

    push @s, http($p, "GET /stream/$k HTTP/1.1\r\nHost: localhost\r\n"
                      . "Connection: close\r\nX-Echo-Size: 67108864\r\n"
                      . "X-Echo-Pace-Ms: 20\r\n\r\n", start => 1);

    my $in = wait_until(sub {
        echo_lines($t, $echo, 'start', qr{ /(?:held|stream)/$k\b}) == 6 }, 10);

    $t->mark_log();
    kill 'KILL', $worker;
    my $t0 = time();

    my $new = wait_until(sub {
        my @w = $t->worker_pids();
        @w == 1 && $w[0] != $worker ? $w[0] : undef }, 10);
    note(sprintf("kill $k: new worker after %.3f s", time() - $t0));

    my @ends = map {
        my $r = http_end($_, timeout => 5);
        my ($s1) = parse_response($r);
        defined $s1 && $s1 == 200 && $r !~ /\r\n0\r\n\r\n\z/ ? 'cut'
            : ($s1 // 'closed');
    } @s;

    ok($in, "kill $k: 6 requests in the handler");
    ok($new, "kill $k: the master started a new worker");
    like("@ends", qr/^(?:closed ){5}(?:closed|cut)$/,
         "kill $k: clients see their connections closed");

    ok(wait_until(sub {
           echo_lines($t, $echo, 'cancel', qr{ /(?:held|stream)/$k\b}) == 6 },
           10), "kill $k: the sidecar told the handler of each request");
    ok(wait_until(sub { fds($echo->{pid})->{total} == $base->{total} }, 10),
       "kill $k: the sidecar's descriptors are back to the baseline");
    is(scalar(segments($echo->{pid})), 0, "kill $k: the sidecar unmapped");
    is(join(' ', memfd_holders(@seg)), '',
       "kill $k: no process holds the segment");

    ($st, $h, $body) = parse_response(http_post($p, "/after/$k", 'after'));
    is("$st $body", '200 after', "kill $k: the new worker serves");
}

push @allpids, $t->worker_pids();

# both at once

my ($worker) = $t->worker_pids();
my @seg = (segments($worker), segments($echo->{pid}));

is(scalar @seg, 2, 'both: the worker and the sidecar map the segment');

kill 'KILL', $worker;
$t->kill_sidecar($echo, 'KILL');

ok(wait_until(sub { !memfd_holders(@seg) }, 10),
   'both killed: no process holds the segment');
ok(wait_until(sub { $t->worker_pids() == 1 }, 10), 'both: a new worker');

$echo = $t->run_sidecar('ngxshm-echo', $sock);
($st, $h, $body) = parse_response(http_post($p, '/again', 'again'));
is("$st $body", '200 again', 'both: served again');

is(join(' ', sysv_segments(@allpids, $t->worker_pids(), $echo->{pid})), '',
   'no System V segments');
