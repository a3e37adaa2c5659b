#!/usr/bin/perl

# Large bodies: a 64 MiB upload comes back byte-exact; a 64 MiB response
# to a slow client does not stall the worker's other requests nor grow
# the worker's or the sidecar's memory; a small segment (64k) carries
# bodies many times its size.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::MD5 qw(md5_hex);
use IO::Select;
use Time::HiRes qw(time sleep);
use POSIX ();
use ShmTest;

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
            shm_segment_size 1m;
            shm_read_timeout 30s;
            shm_send_timeout 30s;
        }

        location /unbuffered/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_segment_size 1m;
            shm_buffering off;
            shm_read_timeout 30s;
            shm_send_timeout 30s;
        }

        location /small/ {
            shm_pass unix:%%TESTDIR%%/small.sock;
            shm_segment_size 64k;
        }
    }
}
EOF

# the sanitizers' quarantine would otherwise count as growth
$t->asan_options('quarantine_size_mb=16');

$t->plan(24);
my $echo = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/small.sock');
$t->run();

my $p = port(0);
my $MiB = 1024 * 1024;
my ($st, $h, $b);

# a 64 MiB upload, each MiB numbered so that reordering shows

my $block = join '', map { chr(($_ * 7 + ($_ >> 8)) & 0xff) } 0 .. $MiB - 1;
my $up = join '', map { sprintf('%08d', $_) . substr($block, 8) } 0 .. 63;

($st, $h, $b) = parse_response(http_post($p, '/up', $up, { timeout => 120 }));
is($st, 200, '64m upload status');
is(length $b, 64 * $MiB, '64m upload length');
is(md5_hex($b), md5_hex($up), '64m upload byte-exact');
undef $up;
undef $b;

# 8 MiB both ways through a 64k segment

my $mid = substr($block x 8, 0, 8 * $MiB - 3);
($st, $h, $b) = parse_response(http_post($p, '/small/up', $mid,
                                         { timeout => 60 }));
ok($st == 200 && $b eq $mid, '8m echoed through a 64k segment');

($st, $h, $b) = parse_response(http_get($p, '/small/get',
    'X-Echo-Size' => 8 * $MiB, { timeout => 60 }));
is(md5_hex($b), md5_hex(pattern(8 * $MiB)), '8m response through 64k');
undef $mid;

# 24 uploads of about 1 MiB at once through the 64k segment: most streams
# wait for room in the ring at any time, and are woken only as many as
# the free room takes; each body comes back whole, and its own

my %kids;

for my $i (1 .. 24) {
    my $body = substr($block x 2, $i * 4099, $MiB - $i);

    my $pid = fork();
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        my ($s, undef, $r) = parse_response(http_post($p, "/small/up$i",
                                                      $body,
                                                      { timeout => 60 }));
        POSIX::_exit(($s // 0) == 200 && defined $r && $r eq $body ? 0 : 1);
    }

    $kids{$pid} = $i;
}

my $whole = 0;

# bounded: each child gives up after its 60 s timeout
for my $pid (keys %kids) {
    waitpid($pid, 0);
    $whole++ if $? == 0;
}

is($whole, 24, '24 uploads at once through a 64k segment, each echoed whole');

# a 64 MiB response read slowly: first 1 MiB, then nothing for 3 s while
# other requests are served, then the rest at full speed; buffered by
# nginx (to a temp file), and unbuffered (held back by the stream credit)

for (1 .. 5) {
    http_get($p, '/warm');
}

slow_client('/slow', 'buffered');
slow_client('/unbuffered/slow', 'unbuffered');


sub slow_client {
    my ($uri, $label) = @_;

    my ($worker) = $t->worker_pids();
    my $rss0 = proc_rss_kb($worker);
    my $side0 = proc_rss_kb($echo->{pid});

    my $size = 64 * $MiB;
    my $s = http($p, "GET $uri HTTP/1.1\r\nHost: localhost\r\n"
                     . "Connection: close\r\nX-Echo-Size: $size\r\n\r\n",
                 start => 1);
    my $raw = '';
    my $sel = IO::Select->new($s);
    my $t0 = time();

    while (length $raw < $MiB && time() < $t0 + 10) {
        next unless $sel->can_read(1);
        my $n = sysread($s, $raw, 65536, length $raw);
        last unless $n;
    }

    ok(length $raw >= $MiB, "$label: slow client got its first 1 MiB");

    my ($max, $ok, $rss, $side) = (0, 0, 0, 0);

    for my $i (1 .. 10) {
        my $r0 = time();
        my ($st, $h, $b) = parse_response(http_post($p, "/other/$i",
            "other $i", { timeout => 5 }));
        my $el = time() - $r0;
        $max = $el if $el > $max;
        $ok++ if $st && $st == 200 && $b eq "other $i";

        my $r = proc_rss_kb($worker) // 0;
        $rss = $r if $r > $rss;
        $r = proc_rss_kb($echo->{pid}) // 0;
        $side = $r if $r > $side;

        sleep(0.3);
    }

    note(sprintf("$label: worker rss %d -> %d KiB, sidecar rss %d -> %d KiB,"
                 . ' slowest other request %.3f s', $rss0, $rss, $side0,
                 $side, $max));

    is($ok, 10, "$label: other requests served while the client stalls");
    cmp_ok($max, '<', 1, "$label: other requests answered within 1 s");
    cmp_ok($rss - $rss0, '<', 64 * 1024,
           "$label: worker rss grew less than 64 MiB");
    cmp_ok($side - $side0, '<', 64 * 1024,
           "$label: sidecar rss grew less than 64 MiB");

    $raw .= http_end($s, timeout => 60);
    my ($st, $h, $b) = parse_response($raw);
    is($st, 200, "$label: slow response status");
    is(length $b, $size, "$label: slow response length");
    ok(md5_hex($b) eq md5_hex(pattern($size)),
       "$label: slow response byte-exact");
    cmp_ok(time() - $t0, '<', 40, "$label: slow response within 40 s");
}
