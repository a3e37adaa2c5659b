#!/usr/bin/perl

# A graceful sidecar stop (SIGTERM: the library closes its listening
# socket, sends GOAWAY on every channel and drains) while requests are in
# flight on two workers' channels and more keep coming: the ones in
# flight finish with 200 and whole bodies, the ones racing the stop get
# 200 or 502, the ones after it 502 at once with an [error] naming the
# socket; nginx closes each channel when its last stream ends, the
# sidecar exits 0, the workers hold no segment.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::MD5 qw(md5_hex);
use Time::HiRes qw(time sleep);
use ShmTest;
use ShmFault;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 2;

events {}

http {
    client_max_body_size 10m;

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

$t->plan(16);

my $sock = $t->testdir() . '/echo.sock';
my $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
$t->run();

my $p = port(0);
my $MiB = 1024 * 1024;
my @workers = $t->worker_pids();
my %wfd0 = map { $_ => fds($_)->{total} } @workers;

# the baseline once the harness's start-up probe connection is closed
for (1 .. 20) {
    select(undef, undef, undef, 0.05);

    for my $w (@workers) {
        my $n = fds($w)->{total};
        $wfd0{$w} = $n if $n < $wfd0{$w};
    }
}
my ($st, $h, $body, $t0);

my ($ok, @bad) = burst($p, 40, 20, '/warm');
is($ok, 40, 'warm up') or diag(join ', ', @bad);

my @seg = map { segments($_) } @workers, $echo->{pid};
my $nch = grep { segments($_) } @workers;
note("channels open before the stop: $nch");

# in flight: held answers, long streamed answers, slow echoes of bodies

my $up = join '', map { chr(($_ * 13) & 0xff) } 0 .. 4 * $MiB - 1;
my @in;

for my $i (1 .. 6) {
    push @in, [ "held $i", $i, http($p, "GET /held/$i HTTP/1.1\r\n"
        . "Host: localhost\r\nConnection: close\r\nX-Echo-Delay-Ms: 1500\r\n"
        . "X-Echo-Size: $i\r\n\r\n", start => 1) ];
}

for my $loc ('/', '/unbuffered/') {
    push @in, [ "stream $loc", 8 * $MiB, http($p, "GET ${loc}stream "
        . "HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        . "X-Echo-Size: " . 8 * $MiB . "\r\nX-Echo-Pace-Ms: 10\r\n\r\n",
        start => 1) ];

    push @in, [ "echo $loc", $up, http($p, "POST ${loc}echo HTTP/1.1\r\n"
        . "Host: localhost\r\nConnection: close\r\nX-Echo-Pace-Ms: 10\r\n"
        . "Content-Length: " . length($up) . "\r\n\r\n$up", start => 1,
        timeout => 20) ];
}

ok(wait_until(sub { echo_lines($t, $echo, 'start', qr/./) >= 40 + 10 }, 10),
   'in flight: 10 requests in the handler');

# racing the stop: sent from just before it to just after it

my ($stopped, @race);

$t->mark_log();

for my $i (1 .. 20) {
    if ($i == 5) {
        kill 'TERM', $echo->{pid};
        $stopped = time();
    }

    push @race, http($p, "GET /race/$i HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nX-Echo-Size: 1000\r\n\r\n", start => 1);
    sleep(0.002);
}

ok(wait_until(sub { !-e $sock }, 5), 'the sidecar removed its socket');

# after the stop: nothing listens, 502 at once

my ($max, @after) = (0);

for my $i (1 .. 5) {
    $t0 = time();
    ($st) = parse_response(http_get($p, "/after/$i"));
    push @after, $st // 'none';
    $max = time() - $t0 if time() - $t0 > $max;
}

my $during = !defined $t->wait_sidecar($echo, 0.01);

is("@after", '502 502 502 502 502', 'after the stop: 502');
cmp_ok($max, '<', 1, 'after the stop: at once');
note(sprintf('after the stop: 502 in at most %.3f s', $max));
ok($during, 'after the stop: while the sidecar still drains');
ok($t->wait_log(qr/\[error\].*connect\(\) to sidecar unix:\Q$sock\E failed/,
                2), 'after the stop: [error] names the socket');

# the ones in flight finish whole

my @bad_in;

for (@in) {
    my ($name, $want, $s) = @$_;
    my ($s1, $h1, $b1) = parse_response(http_end($s, timeout => 20));

    $want = pattern($want) if $want =~ /^\d+$/;

    push @bad_in, "$name: " . ($s1 // 'none') . ' ' . length($b1)
        unless defined $s1 && $s1 == 200 && md5_hex($b1) eq md5_hex($want);
}

is(join(', ', @bad_in), '', 'in flight: 200 and whole bodies');

my %race;

for (@race) {
    my ($s1, $h1, $b1) = parse_response(http_end($_));
    my $r = !defined $s1 ? 'none'
            : $s1 == 200 && $b1 eq pattern(1000) ? '200'
            : $s1 == 502 ? '502' : "bad $s1";
    $race{$r}++;
}

is(join(' ', grep { !/^(?:200|502)$/ } keys %race), '',
   'racing the stop: 200 with the whole body, or 502');
note(join ', ', map { "$race{$_} x $_" } sort keys %race);

is($t->wait_sidecar($echo, 10), 0, 'the sidecar exits 0 after the drain');
note(sprintf('drained and exited %.3f s after SIGTERM', time() - $stopped));

my $gone = () = $t->read_log() =~ /sidecar \S+ went away, channel closed/g;
is($gone, $nch, 'nginx closed each channel when its last stream ended');
unlike($t->read_log(), qr/streams in flight/, 'no channel failed');

ok(wait_until(sub { !grep { segments($_) } @workers }, 5),
   'no worker maps a segment');
is(join(' ', memfd_holders(@seg)), '', 'no process holds one');
ok(wait_until(sub { !grep { fds($_)->{total} > $wfd0{$_} } @workers }, 5),
   'workers have their descriptors of before the first request');

# a new sidecar

$echo = $t->run_sidecar('ngxshm-echo', $sock);
($st, $h, $body) = parse_response(http_post($p, '/new', 'new'));
is("$st $body", '200 new', 'a new sidecar: served');
