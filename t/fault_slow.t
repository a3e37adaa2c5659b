#!/usr/bin/perl

# Slow clients and slow handlers at once, on one channel: two clients
# read 64 MiB responses at a crawl (buffered by nginx, and not), twenty
# streams come from a handler that produces slowly, ten from a handler
# that reads its request body slowly, while short requests keep coming.
# The short requests are answered quickly, every body arrives whole, and
# the memory of the worker and of the sidecar stays bounded.
# (t/large.t has one stalled client alone; this is the crowd.)

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
worker_processes 1;

events {}

http {
    client_max_body_size 100m;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_read_timeout 30s;
            shm_send_timeout 30s;
        }

        location /unbuffered/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffering off;
            shm_read_timeout 30s;
            shm_send_timeout 30s;
        }
    }
}
EOF

$t->asan_options('quarantine_size_mb=16');

$t->plan(11);

my $echo = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my $MiB = 1024 * 1024;
my ($worker) = $t->worker_pids();

my ($ok, @bad) = burst($p, 100, 10, '/warm');
is($ok, 100, 'warm up') or diag(join ', ', @bad);

my $rss0 = proc_rss_kb($worker);
my $srss0 = proc_rss_kb($echo->{pid});
my ($rss, $srss) = ($rss0, $srss0);

my @c;

# crawlers: 256 KiB/s for 8 s, then as fast as they can

for my $loc ('/', '/unbuffered/') {
    push @c, { kind => 'crawl', size => 64 * $MiB, rate => 262144,
               req => get("${loc}crawl", 64 * $MiB, 0) };
}

# slow producers: 8 MiB each, 64 KiB every 20 ms

for my $i (1 .. 20) {
    my $loc = $i % 2 ? '/' : '/unbuffered/';
    push @c, { kind => 'produce', size => 8 * $MiB,
               req => get("${loc}produce/$i", 8 * $MiB, 20) };
}

# slow readers: a 4 MiB body echoed 64 KiB every 20 ms

my $up = join '', map { chr(($_ * 31 + 7) & 0xff) } 0 .. 4 * $MiB - 1;

for my $i (1 .. 10) {
    my $loc = $i % 2 ? '/' : '/unbuffered/';
    push @c, { kind => 'read', body => $up,
               req => "POST ${loc}read/$i HTTP/1.1\r\nHost: localhost\r\n"
                      . "Connection: close\r\nX-Echo-Pace-Ms: 20\r\n"
                      . "Content-Length: " . length($up) . "\r\n\r\n$up" };
}

$_->{port} = $p for @c;

# short requests, one every 0.2 s while the others run

my $start = time();
my $n = 0;

my $all = clients(
    clients => \@c,
    every => [ 0.2, sub {
        return undef if time() > $start + 12;
        $n++;
        return { kind => 'short', port => $p, body => "short $n",
                 req => "POST /short/$n HTTP/1.1\r\nHost: localhost\r\n"
                        . "Connection: close\r\nContent-Length: "
                        . length("short $n") . "\r\n\r\nshort $n" };
    } ],
    until => $start + 12,
    tick => sub {
        my $r = proc_rss_kb($worker) // 0;
        $rss = $r if $r > $rss;
        $r = proc_rss_kb($echo->{pid}) // 0;
        $srss = $r if $r > $srss;

        if (time() > $start + 8) {
            delete $_->{rate} for grep { $_->{kind} eq 'crawl' } @c;
        }
    },
    timeout => 90);

my (%bad, %max, %count);

for my $c (@$all) {
    my ($st, $h, $b) = parse_response($c->{raw});
    my $want = defined $c->{body} ? $c->{body} : pattern($c->{size});
    my $k = $c->{kind};

    $count{$k}++;
    $max{$k} = $c->{t} if ($c->{t} // 999) > ($max{$k} // 0);

    push @{$bad{$k}}, ($st // 'none') . ' ' . length($b)
        unless $c->{done} && defined $st && $st == 200
               && length($b) == length($want) && md5_hex($b) eq md5_hex($want);
}

note(join ', ', map { sprintf('%d %s, slowest %.3f s', $count{$_}, $_,
                              $max{$_} // -1) } sort keys %count);
note("worker rss $rss0 -> max $rss KiB, sidecar rss $srss0 -> max $srss KiB");

is(join(' ', @{$bad{crawl} || []}), '', 'crawlers: whole bodies');
is(join(' ', @{$bad{produce} || []}), '', 'slow producers: whole bodies');
is(join(' ', @{$bad{read} || []}), '', 'slow readers: whole bodies');
is(join(' ', @{$bad{short} || []}), '', 'short requests: all answered');
cmp_ok($count{short}, '>=', 40, 'short requests: kept coming');
# a short request stuck behind the slow ones would wait seconds (a slow
# stream lasts 3 to 10 s); on a loaded machine a few may take a while
my @short = sort { $a <=> $b } map { $_->{t} // 999 }
            grep { $_->{kind} eq 'short' } @$all;
my $p90 = $short[int(0.9 * $#short)];

note(sprintf('short requests: median %.3f s, 90%% %.3f s, max %.3f s',
             $short[$#short / 2], $p90, $short[-1]));
cmp_ok($p90, '<', 0.5, 'short requests: 90% within 0.5 s');
cmp_ok($short[-1], '<', 2.5, 'short requests: each within 2.5 s');

# bounded: one window (256 KiB) per stream and nginx's buffers, not the
# 350 MiB that went through; ASan's quarantine may add 16 MiB

my $slack = $t->asan() ? 24576 : 0;

cmp_ok($rss - $rss0, '<', 16384 + $slack, 'worker rss grew by < 16 MiB');
cmp_ok($srss - $srss0, '<', 16384 + $slack, 'sidecar rss grew by < 16 MiB');

($ok, @bad) = burst($p, 50, 10, '/after');
is($ok, 50, 'after: served') or diag(join ', ', @bad);


sub get {
    my ($uri, $size, $pace) = @_;

    return "GET $uri HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
           . "X-Echo-Size: $size\r\n"
           . ($pace ? "X-Echo-Pace-Ms: $pace\r\n" : '') . "\r\n";
}
