#!/usr/bin/perl

# The sidecar freezes (SIGSTOP) with requests in flight and queued: they
# end with 504 after shm_read_timeout; nginx cancels them; after SIGCONT
# the sidecar learns it (the handler of a request that was running sees
# a cancel, a request it had not read yet never reaches its handler), its
# late answers are dropped, and the same channel goes on.  Five freezes,
# then some hundreds of requests: all served, nothing lost (slots: the
# channel has no stream left when the sidecar stops; memory: RSS).

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
    client_max_body_size 10m;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_read_timeout 2s;
            shm_send_timeout 2s;
        }
    }
}
EOF

# the sanitizers' quarantine would otherwise count as growth
$t->asan_options('quarantine_size_mb=16');

my $CYCLES = 5;

$t->plan(19 + 5 * $CYCLES);

my $sock = $t->testdir() . '/echo.sock';
my $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
$t->run();

my $p = port(0);
my ($worker) = $t->worker_pids();
my ($st, $h, $body);

my ($ok, @bad) = burst($p, 300, 10, '/warm');
is($ok, 300, 'warm up: 300 requests served') or diag(join ', ', @bad);

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

is(scalar @seg0, 1, 'one channel');

my (@el504, $late);

for my $k (1 .. $CYCLES) {
    $t->mark_log();

    # running in the handler: B answers after the freeze, A during it
    my @s;

    for my $i (1 .. 3) {
        push @s, [ "b/$k/$i", time(), get("/b/$k/$i", 5000) ];
        push @s, [ "a/$k/$i", time(), get("/a/$k/$i", 2500) ];
    }

    my $in = wait_until(sub {
        echo_lines($t, $echo, 'start', qr{^GET /[ab]/$k/}) == 6 }, 5);

    $t->kill_sidecar($echo, 'STOP');
    my $frozen = time();

    # sent to the frozen sidecar: never read before they time out
    for my $i (1 .. 2) {
        push @s, [ "c/$k/$i", time(), get("/c/$k/$i", 0) ];
    }

    my @st;

    for (@s) {
        my ($name, $t0, $s) = @$_;
        my ($s1) = parse_response(http_end($s, timeout => 10));
        push @st, ($s1 // 'none');
        push @el504, time() - $t0 if ($s1 // 0) == 504;
    }

    sleep($frozen + 3 - time()) if time() < $frozen + 3;
    $t->kill_sidecar($echo, 'CONT');

    ok($in, "freeze $k: 6 requests in the handler");
    is(join(' ', grep { $_ ne '504' } @st), '', "freeze $k: all 8 get 504");

    ($st, $h, $body) = parse_response(http_post($p, "/next/$k",
                                                 "next $k"));
    is("$st $body", "200 next $k", "freeze $k: next request served");
    is(join(' ', segments($worker)), "@seg0",
       "freeze $k: same channel (segment)");
    unlike($t->read_log(), qr/channel closed|VIOLATION/,
           "freeze $k: the channel was not closed");
}

my ($min, $max) = (sort { $a <=> $b } @el504)[0, -1];
note(sprintf('504 after %.3f .. %.3f s, shm_read_timeout 2 s (%d requests)',
             $min, $max, scalar @el504));
ok($min > 1.8 && $max < 5, '504 at shm_read_timeout')
    or diag("$min .. $max");

ok(wait_until(sub {
       echo_lines($t, $echo, 'cancel', qr{^GET /b/}) == 3 * $CYCLES }, 5),
   'the sidecar was told of every request its handler held');
is(scalar(echo_lines($t, $echo, 'start', qr{^GET /c/})), 0,
   'requests it had not read never reached its handler');

# A's timer and nginx's CANCEL race when the sidecar wakes up: it
# answers late (dropped by nginx), or learns of the cancel first

$late = echo_lines($t, $echo, 'answer', qr{^GET /a/});
my $told = echo_lines($t, $echo, 'cancel', qr{^GET /a/});
note("due during the freeze: $late of " . 3 * $CYCLES . ' answered late, '
     . "$told told first");
is($late + $told, 3 * $CYCLES, 'due during the freeze: told or answered');

# a freeze with the request ring full: 40 uploads of 200 KiB, more than
# the ring holds; they end with 504 (send timeout), and their CANCELs
# wait for room in the ring until the sidecar wakes up

{
    $t->mark_log();
    $t->kill_sidecar($echo, 'STOP');
    my $frozen = time();

    my $up = 'f' x (200 * 1024);
    my @s = map {
        http($p, "POST /full/$_ HTTP/1.1\r\nHost: localhost\r\n"
                 . "Connection: close\r\nContent-Length: " . length($up)
                 . "\r\n\r\n$up", start => 1);
    } 1 .. 40;

    my @st = map { (parse_response(http_end($_, timeout => 10)))[0] // 'none' }
             @s;

    sleep($frozen + 3 - time()) if time() < $frozen + 3;
    $t->kill_sidecar($echo, 'CONT');

    is(join(' ', grep { $_ ne '504' } @st), '', 'full ring: all 40 get 504');
    like($t->read_log(), qr/timed out .* while sending request to upstream/,
         'full ring: the uploads timed out waiting for room');

    ($st, $h, $body) = parse_response(http_post($p, '/full/next', 'next'));
    is("$st $body", '200 next', 'full ring: next request served');
    is(join(' ', segments($worker)), "@seg0", 'full ring: same channel');
    my $started = echo_lines($t, $echo, 'start', qr{/full/\d});
    ok(wait_until(sub {
           echo_lines($t, $echo, 'cancel', qr{/full/\d}) == $started }, 5),
       "full ring: the handler was told of each upload it got ($started)");
}

# nothing lost: some hundreds of requests, bodies up to 2 MiB

($ok, @bad) = burst($p, 300, 10, '/after');
is($ok, 300, 'after the freezes: 300 requests served')
    or diag(join ', ', @bad);

# client connections may take a moment to close (lingering close)
my $wfd1 = wait_until(sub {
    my $f = fds($worker);
    $f->{total} <= $wfd0->{total} ? $f : undef }, 5) || fds($worker);
my $sfd1 = fds($echo->{pid});
my $rss1 = proc_rss_kb($worker);
my $srss1 = proc_rss_kb($echo->{pid});

note("worker rss $rss0 -> $rss1 KiB, sidecar rss $srss0 -> $srss1 KiB, "
     . "worker fds $wfd0->{total} -> $wfd1->{total}, "
     . "sidecar fds $sfd0->{total} -> $sfd1->{total}");

ok($wfd1->{total} <= $wfd0->{total}, 'worker: as many descriptors as before')
    or diag("worker fds $wfd0->{total} -> $wfd1->{total}");
# under ASan freed memory waits in a quarantine of 16 MiB
my $slack = $t->asan() ? 4096 + 24576 : 4096;

cmp_ok($rss1 - $rss0, '<', $slack, 'worker rss grew within bounds');
cmp_ok($srss1 - $srss0, '<', $slack, 'sidecar rss grew within bounds');
is(join(' ', sort keys %{$sfd1->{sockets}}),
   join(' ', sort keys %{$sfd0->{sockets}}),
   'the sidecar has the same sockets: no new channel');
is(join(' ', $worker, $echo->{pid}),
   join(' ', $t->worker_pids(), $echo->{pid}), 'same worker, same sidecar');

# slots: a gracefully stopping sidecar waits until nginx closes the
# channel, which nginx does only when no stream is left on it

$t->mark_log();
is($t->kill_sidecar($echo, 'TERM'), 0, 'graceful stop: exit status 0');
ok($t->wait_log(qr/sidecar \S+ went away, channel closed/, 2),
   'nginx closed the channel: no stream left on it');


sub get {
    my ($uri, $delay) = @_;

    return http($p, "GET $uri HTTP/1.1\r\nHost: localhost\r\n"
                    . "Connection: close\r\n"
                    . ($delay ? "X-Echo-Delay-Ms: $delay\r\n" : '')
                    . "\r\n", start => 1);
}
