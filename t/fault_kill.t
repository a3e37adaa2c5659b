#!/usr/bin/perl

# The sidecar is killed (SIGKILL) with requests in flight:
#   - before the response head: 502 at once, an [error] naming the socket;
#   - in the middle of a streamed response: the client connection is
#     closed and the body is not presented as complete (fewer bytes than
#     Content-Length; no last chunk when chunked), buffered or not;
#   - in the middle of a request body going to the sidecar: 502 or a
#     closed connection, with an [error].
# Then a restarted sidecar serves the first request; the worker is the
# same process; no segment outlives both processes.

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

$t->plan(55);

my $sock = $t->testdir() . '/echo.sock';
my $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
$t->run();

my $p = port(0);
my $MiB = 1024 * 1024;
my ($worker) = $t->worker_pids();
my $pipes0 = fds($worker)->{pipe};     # nginx's own, before any channel
my ($st, $h, $b, $t0);

($st, $h, $b) = parse_response(http_post($p, '/warm', 'warm'));
is("$st $b", '200 warm', 'warm up');


# (a) before the response head: 20 requests in flight, GETs and POSTs
# whose answer the sidecar holds back

my @seg = (segments($worker), segments($echo->{pid}));
is(scalar @seg, 2, 'one segment mapped by the worker and by the sidecar');

my @s = map {
    my $body = $_ % 2 ? 'x' x (4096 * $_) : undef;
    my $r = ($body ? 'POST' : 'GET') . " /a/$_ HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nX-Echo-Delay-Ms: 8000\r\n"
        . ($body ? "Content-Length: " . length($body) . "\r\n\r\n$body"
                 : "\r\n");
    http($p, $r, start => 1);
} 1 .. 20;

ok(wait_until(sub { echo_lines($t, $echo, 'start', qr{ /a/}) == 20 }, 10),
   'before head: 20 requests reached the sidecar');

$t->mark_log();
$t->kill_sidecar($echo, 'KILL');
$t0 = time();

my (@st, $last);

for my $s (@s) {
    my ($s1) = parse_response(http_end($s, timeout => 10));
    push @st, $s1 // 'none';
    $last = time() - $t0;
}

is(join(' ', grep { $_ ne '502' } @st), '', 'before head: all 20 get 502');
cmp_ok($last, '<', 1, 'before head: the last 502 within 1 s');
note(sprintf('before head: 20 requests, last 502 %.3f s after SIGKILL',
             $last));

ok($t->wait_log(qr/\[error\].*sidecar closed the channel.*\Q$sock\E/, 2),
   'before head: [error] names the cause and the socket');
like($t->read_log(), qr/channel closed with 20 streams in flight/,
     'before head: the channel line counts 20 streams');

ok(wait_until(sub { !segments($worker) }, 5),
   'before head: the worker unmapped the segment');
is(join(' ', memfd_holders(@seg)), '', 'before head: no process holds it');

# the next request while nothing listens

$t0 = time();
($st) = parse_response(http_get($p, '/dead'));
is($st, 502, 'dead: 502');
cmp_ok(time() - $t0, '<', 1, 'dead: at once');

# restarted: the first request is served

$echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);

($st, $h, $b) = parse_response(http_post($p, '/again', 'again'));
is("$st $b", '200 again', 'restarted: first request served');
is(join(' ', $t->worker_pids()), $worker, 'restarted: same worker');


# (b) in the middle of a streamed response: Content-Length, buffered and
# not; chunked (the echoed request body has no length), buffered and not

for my $loc ('/', '/unbuffered/') {
    my $label = $loc eq '/' ? 'buffered' : 'unbuffered';
    my $size = 64 * $MiB;

    my $s = stream_start($p, "GET ${loc}cl HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nX-Echo-Size: $size\r\n"
        . "X-Echo-Pace-Ms: 20\r\n\r\n", 256 * 1024, 10);

    ok(defined $s->{body_at}, "cl $label: streaming when the sidecar dies");

    $t->mark_log();
    $t->kill_sidecar($echo, 'KILL');
    $t0 = time();
    stream_finish($s, 10);

    my $head = substr($s->{raw}, 0, $s->{body_at} // 0);
    my $got = length($s->{raw}) - ($s->{body_at} // 0);

    like($head, qr/^HTTP\/1\.1 200 .*\r\nContent-Length: $size\r\n/s,
         "cl $label: 200 with Content-Length");
    ok($s->{eof}, "cl $label: connection closed") or diag($s->{error});
    ok($got > 0 && $got < $size, "cl $label: fewer bytes than announced")
        or diag("got $got of $size");
    ok(substr($s->{raw}, $s->{body_at} // 0) eq pattern($got),
       "cl $label: the bytes that came are right");
    note(sprintf("cl $label: %d of %d bytes, closed %.3f s after SIGKILL",
                 $got, $size, time() - $t0));
    ok($t->wait_log(qr/\[error\].*sidecar closed the channel.*\Q$sock\E/,
                    2), "cl $label: [error] names the cause");

    $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
    ($st, $h, $b) = parse_response(http_post($p, "/cl/$label", 'next'));
    is("$st $b", '200 next', "cl $label: restarted, first request served");
}

for my $loc ('/', '/unbuffered/') {
    my $label = $loc eq '/' ? 'buffered' : 'unbuffered';
    my $body = 'c' x (16 * $MiB);

    my $s = stream_start($p, "POST ${loc}chunked HTTP/1.1\r\n"
        . "Host: localhost\r\nConnection: close\r\nX-Echo-Pace-Ms: 20\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body",
        256 * 1024, 20);

    ok(defined $s->{body_at}, "chunked $label: streaming when it dies");

    $t->mark_log();
    $t->kill_sidecar($echo, 'KILL');
    stream_finish($s, 10);

    my $head = substr($s->{raw}, 0, $s->{body_at} // 0);
    my $rest = substr($s->{raw}, $s->{body_at} // 0);

    like($head, qr/^HTTP\/1\.1 200 .*\r\nTransfer-Encoding: chunked\r\n/s,
         "chunked $label: 200, chunked");
    ok($s->{eof}, "chunked $label: connection closed");
    unlike($rest, qr/\r\n0\r\n\r\n\z/, "chunked $label: no last chunk");
    (undef, undef, $b) = parse_response($s->{raw});
    ok(length($b) > 0 && $b eq 'c' x length($b),
       "chunked $label: the bytes that came are right");
    ok($t->wait_log(qr/\[error\].*sidecar closed the channel.*\Q$sock\E/,
                    2), "chunked $label: [error] names the cause");

    $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);
}


# (c) in the middle of the request body: the sidecar holds its answer
# back and reads nothing, so nginx has sent one window of a 32 MiB body
# and waits for credit when the sidecar dies

{
    my $body = 'u' x (32 * $MiB);
    my $s = http($p, "POST /upload HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nX-Echo-Delay-Ms: 15000\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body",
        start => 1, timeout => 20);

    ok(wait_until(sub { echo_lines($t, $echo, 'start', qr{/upload}) }, 10),
       'upload: the sidecar has the request');
    sleep(0.3);

    $t->mark_log();
    $t->kill_sidecar($echo, 'KILL');
    $t0 = time();
    ($st) = parse_response(http_end($s, timeout => 10));
    my $el = time() - $t0;

    is($st, 502, 'upload: 502');
    cmp_ok($el, '<', 1, 'upload: at once');
    note(sprintf('upload: 502 %.3f s after SIGKILL', $el));
    ok($t->wait_log(qr/\[error\].*sidecar closed the channel.*\Q$sock\E/,
                    2), 'upload: [error] names the cause');
}

# the sidecar echoes the body slowly (its answer has started): the
# client connection is closed before the end of the body

{
    $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);

    my $body = 'v' x (32 * $MiB);
    my $s = stream_start($p, "POST /unbuffered/upload HTTP/1.1\r\n"
        . "Host: localhost\r\nConnection: close\r\nX-Echo-Pace-Ms: 10\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body",
        $MiB, 20);

    ok(defined $s->{body_at}, 'slow upload: under way when it dies');

    $t->mark_log();
    $t->kill_sidecar($echo, 'KILL');
    stream_finish($s, 10);

    my $rest = substr($s->{raw}, $s->{body_at} // 0);

    ok($s->{eof}, 'slow upload: connection closed');
    unlike($rest, qr/\r\n0\r\n\r\n\z/, 'slow upload: no last chunk');
    ok(length($rest) < length($body), 'slow upload: body cut');
    ok($t->wait_log(qr/\[error\].*sidecar closed the channel.*\Q$sock\E/,
                    2), 'slow upload: [error] names the cause');
}

# a client still sending its body when the sidecar dies: nginx reads the
# whole body before it opens the stream, so it finds nobody listening

{
    $echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);

    my $len = 8 * $MiB;
    my $s = http($p, "POST /late HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nContent-Length: $len\r\n\r\n"
        . ('w' x $MiB), start => 1);

    $t->kill_sidecar($echo, 'KILL');
    $t->mark_log();

    ($st) = parse_response(http($p, 'w' x ($len - $MiB), socket => $s,
                                timeout => 10));
    is($st, 502, 'client body arriving: 502');
    ok($t->wait_log(qr/\[error\].*connect\(\) to sidecar.*\Q$sock\E/, 2),
       'client body arriving: [error] names the socket');
}


# the restarted sidecar serves at once; same worker; nothing left over

$echo = $t->run_sidecar('ngxshm-echo', '-l', $sock);

($st, $h, $b) = parse_response(http_post($p, '/final', 'final'));
is("$st $b", '200 final', 'restarted: first request served');
is(join(' ', $t->worker_pids()), $worker, 'same worker throughout');
is(scalar(segments($worker)), 1, 'worker maps one segment');

my $f = fds($worker);
is("$f->{eventfd} " . ($f->{pipe} - $pipes0) . " $f->{memfd}", "2 1 0",
   'worker: eventfd and pipe of one channel, its own eventfd, no memfd')
    or diag("eventfd $f->{eventfd} pipe $f->{pipe} memfd $f->{memfd}");

is(join(' ', sysv_segments($t->nginx_pid(), $worker, $echo->{pid})), '',
   'no System V segments');
