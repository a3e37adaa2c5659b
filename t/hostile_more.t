#!/usr/bin/perl

# A sidecar that breaks the protocol (t/tools/hostile-sidecar.c, one mode and
# one socket per location).  nginx closes the channel of a sidecar that
# breaks the framing, with an [error] naming the violation and the socket;
# a bad response head fails only its request; the client gets 502 (504
# when nothing comes), or a response that does not look complete.  The
# worker neither crashes, hangs nor leaks descriptors or segments, a
# healthy sidecar in the same worker is served all along, and the next
# request to the evil sidecar (which behaves after its first misdeed)
# is served: on the same channel if nginx kept it, on a new one if not.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
use Time::HiRes qw(time sleep);
use ShmTest;

# [mode, request, status, log, channel]
#   request  get, or post: a body larger than the window, so that nginx
#            still holds the stream when the sidecar's response ended
#   log      what an [error] line naming the socket says (undef: no
#            [error] at all; "warn:TEXT": a [warn] line)
#   channel  closed: nginx closes it, the next request opens channel 2;
#            kept: the next request is served on channel 1;
#            refused: the sidecar refused it

my @modes = (
    # the handshake
    [ 'bad-magic-ack',     'get',  502, 'sent an invalid control message',
      'closed' ],
    [ 'refuse',            'get',  502, 'sidecar refused the channel',
      'refused' ],
    [ 'short-ack',         'get',  502, 'sent an invalid control message',
      'closed' ],
    [ 'ack-junk',          'get',  502, 'sent an invalid control message',
      'closed' ],
    [ 'ack-twice',         'get',  502, 'sent an invalid control message',
      'closed' ],

    # the rings and the frames: the channel is closed
    [ 'garbage',           'get',  502, 'nonzero reserved field in frame',
      'closed' ],
    [ 'tail-unaligned',    'get',  502, 'ring tail out of range', 'closed' ],
    [ 'tail-backwards',    'get',  502, 'ring tail out of range', 'closed' ],
    [ 'len-past-ring',     'get',  502, 'frame longer than max_frame',
      'closed' ],
    [ 'len-past-tail',     'get',  502, 'frame crosses ring end or tail',
      'closed' ],
    [ 'bad-pad',           'get',  502, 'bad pad frame', 'closed' ],
    [ 'bad-reserved',      'get',  502, 'nonzero reserved field in frame',
      'closed' ],
    [ 'unknown-type',      'get',  502, 'unknown frame type', 'closed' ],
    [ 'wrong-direction',   'get',  502,
      'frame type not allowed from a sidecar', 'closed' ],
    [ 'bad-goaway',        'get',  502, 'invalid GOAWAY frame', 'closed' ],
    [ 'bad-slot',          'get',  502, 'stream slot out of range',
      'closed' ],
    [ 'never-issued',      'get',  502, 'frame for a stream never opened',
      'closed' ],
    [ 'wrong-gen-future',  'get',  502, 'frame for a stream never opened',
      'closed' ],
    [ 'body-before-head',  'get',  502,
      'body frame before the response head', 'closed' ],
    [ 'short-head-frame',  'get',  502, 'short first head frame', 'closed' ],
    [ 'bad-head-size',     'get',  502, 'invalid head block size', 'closed' ],
    [ 'head-overrun',      'get',  502,
      'head frames longer than the head block', 'closed' ],
    [ 'head-underrun',     'get',  502,
      'head frames shorter than the head block', 'closed' ],
    [ 'bad-head-flags',    'get',  502, 'invalid flags on a head frame',
      'closed' ],
    [ 'bad-body-flags',    'get',  502, 'invalid flags on a body frame',
      'closed' ],
    [ 'body-over-credit',  'get',  502, 'body beyond the credit', 'closed' ],
    [ 'credit-overflow',   'get',  502, 'credit beyond the window', 'closed' ],
    [ 'credit-zero',       'get',  502, 'credit beyond the window', 'closed' ],
    [ 'bad-credit-len',    'get',  502, 'invalid CREDIT frame', 'closed' ],
    [ 'bad-reset-len',     'get',  502, 'invalid RESET frame', 'closed' ],
    [ 'head-after-head',   'get',  502, 'response head after the head',
      'closed' ],
    [ 'head-cont-complete', 'get', 502,
      'body frame before the response head', 'closed' ],
    [ 'head-index-garbage', 'post', 502, 'request ring head out of range',
      'closed' ],

    # a violation after the response's END: the response was complete
    # before it, and is delivered; the channel is closed all the same
    [ 'head-after-end',    'post', 200, 'response head after the head',
      'closed' ],
    [ 'body-after-end',    'post', 200,
      'body frame after the end of the response', 'closed' ],
    [ 'reset-after-end',   'post', 200, 'RESET after the end of the response',
      'closed' ],

    # a bad response head fails its request only
    [ 'reset',             'get',  502, 'reset stream', 'kept' ],
    [ 'huge-nfields',      'get',  502,
      'sidecar sent invalid header block: size 32, 65535 fields', 'kept' ],
    [ 'cr-in-name',        'get',  502, 'sidecar sent invalid header name',
      'kept' ],
    [ 'lf-in-name',        'get',  502, 'sidecar sent invalid header name',
      'kept' ],
    [ 'lf-in-value',       'get',  502,
      'sidecar sent invalid value in header "X-Evil"', 'kept' ],
    [ 'nul-in-value',      'get',  502,
      'sidecar sent invalid value in header "X-Evil"', 'kept' ],
    [ 'status-99',         'get',  502, 'sidecar sent invalid status 99 ',
      'kept' ],
    [ 'status-1000',       'get',  502, 'sidecar sent invalid status 1000 ',
      'kept' ],
    [ 'bad-field',         'get',  502, 'sidecar sent invalid header field #0',
      'kept' ],
    [ 'head-too-big',      'get',  502,
      'sent too big header: 8228 bytes, "shm_buffer_size" is 4096', 'kept' ],

    # answers that are legal frames but odd HTTP
    [ 'finished-stream',   'get',  200, undef, 'kept' ],
    [ 'hop-headers',       'get',  200, undef, 'kept' ],
    [ 'cl-short',          'get',  200,
      'upstream prematurely closed connection', 'kept' ],
    [ 'cl-long',           'get',  200,
      'warn:upstream sent more data than specified in "Content-Length"',
      'kept' ],
    [ 'ka/cl-short',       'ka',   200,
      'upstream prematurely closed connection', 'kept' ],
    [ 'nb/cl-short',       'get',  200,
      'upstream prematurely closed connection', 'kept' ],
    [ 'nb/cl-long',        'get',  200,
      'warn:sidecar sent more data than specified in "Content-Length"',
      'kept' ],
);

my $locations = join '', map {
    my $sock = sock_name($_->[0]);
    my $nb = $_->[0] =~ m{^nb/} ? "            shm_buffering off;\n" : '';

    "        location /$_->[0]/ {\n"
    . "            shm_pass unix:%%TESTDIR%%/$sock;\n$nb"
    . "        }\n\n"
} @modes, ['never-read'], ['flood'], ['ftruncate'], ['efd-block-read'],
    ['efd-block-write'];

my $t = ShmTest->new()->write_config(<<"EOF");
worker_processes 1;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        shm_connect_timeout 2s;
        shm_read_timeout 2s;
        shm_send_timeout 2s;
        shm_buffer_size 4k;

$locations        location /echo/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }

    # a small send buffer and no buffering: what the client does not
    # read stays in the worker's stream
    server {
        listen 127.0.0.1:%%PORT_1%% sndbuf=4k;
        server_name localhost;

        location /tiny-frames/ {
            shm_pass unix:%%TESTDIR%%/tiny-frames.sock;
            shm_buffering off;
        }
    }
}
EOF

my $evil = $t->build() . '/t/tools/hostile-sidecar';

plan(skip_all => "no $evil") unless -x $evil;

# the sanitizers' quarantine would otherwise count as growth
$t->asan_options('quarantine_size_mb=16');

$t->plan(5 * @modes + 39);

$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my @workers = $t->worker_pids();
my $worker = $workers[0];

# nginx's own eventfd (the epoll module's notifications), if any
my $efd0 = neventfds($worker);

# a window of body in 1-byte frames to a client that does not read: the
# worker holds it all, in about the bytes it carries (first, before the
# other modes leave freed heap behind for it to reuse) (a chunk per frame
# would be 128 Ki allocations, several MiB)

my $tiny = $t->run_sidecar($evil, 'tiny-frames',
                           '%%TESTDIR%%/tiny-frames.sock');
my $tiny_rss0 = rss_anon_kb($worker);
my $ts = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
setsockopt($ts, SOL_SOCKET, SO_RCVBUF, 4096) or die "SO_RCVBUF: $!";
$ts->connect(pack_sockaddr_in(port(1), inet_aton('127.0.0.1')))
    or die "connect: $!";
print $ts "GET /tiny-frames/ HTTP/1.1\r\nHost: localhost\r\n"
          . "Connection: close\r\n\r\n";

my $tiny_done = 0;
my $end_tiny = time() + 10;

while (!$tiny_done && time() < $end_tiny) {
    sleep(0.1);
    open my $fh, '<', $tiny->{stdout} or last;
    $tiny_done = grep { /tiny-frames: done/ } <$fh>;
    close $fh;
}

my $grown = 0;

for (1 .. 10) {
    sleep(0.1);
    my $g = rss_anon_kb($worker) - $tiny_rss0;
    $grown = $g if $g > $grown;
}

ok($tiny_done && $grown < 1024,
   "tiny-frames: worker grew $grown KiB holding them");

my $raw = '';
my $end_read = time() + 10;

while (time() < $end_read) {
    my $n = sysread($ts, my $buf, 65536);
    last unless $n;
    $raw .= $buf;
}

close $ts;

my ($tst, undef, $tb) = parse_response($raw);
ok($tst eq '200' && $tb =~ /^x+$/ && length($tb) >= 4096,
   'tiny-frames: the body arrives whole (' . length($tb // '') . ' bytes)');

# its channel goes with it: the counts of segments and fds below
$t->kill_sidecar($tiny, 'TERM');
$t->wait_sidecar($tiny);

my $body = 'x' x 200000;
my (%resp, %sidecar);

for my $m (@modes) {
    my ($mode, $req, $status, $log, $channel) = @$m;
    my $sock = $t->testdir() . '/' . sock_name($mode);
    (my $evil_mode = $mode) =~ s{^(?:nb|ka)/}{};

    my $h = $sidecar{$mode} = $t->run_sidecar($evil, $evil_mode, $sock);

    $t->mark_log();

    my $t0 = time();
    my $raw = $req eq 'post' ? http_post($p, "/$mode/", $body)
              : $req eq 'ka' ? http_get($p, "/$mode/",
                                        { keepalive => 1, timeout => 5 })
              : http_get($p, "/$mode/");
    my ($st, $hd, $b) = parse_response($raw);

    $resp{$mode} = { raw => $raw, status => $st, headers => $hd, body => $b,
                     time => time() - $t0 };

    is($st, $status, "$mode: status $status");

    if (!defined $log) {
        sleep(0.1);
        unlike($t->read_log(), qr/\[(?:error|warn)\]/, "$mode: nothing logged");

    } else {
        my $level = $log =~ s/^warn:// ? 'warn' : 'error';

        ok(wait_line($t, $level, $log, $sock),
           "$mode: [$level] \"$log\" names the socket");
    }

    my $n = $channel eq 'kept' ? 1 : 2;

    if ($channel eq 'closed') {
        ok(wait_out($h, qr/^channel 1: closed by nginx$/m),
           "$mode: nginx closed the channel");

    } elsif ($channel eq 'refused') {
        ok(wait_out($h, qr/^channel 1: closed by us$/m),
           "$mode: the sidecar closed the channel");

    } else {
        unlike($t->read_log(), qr/channel closed/, "$mode: channel kept");
    }

    my ($st2, $h2, $b2) = parse_response(http_get($p, "/$mode/again"));
    is("$st2 $b2", "200 ok $n\n", "$mode: next request on channel $n");

    my ($st3, $h3, $b3) = parse_response(http_post($p, '/echo/', $mode));
    ok($st3 == 200 && $b3 eq $mode
       && join(' ', $t->worker_pids()) eq join(' ', @workers),
       "$mode: same worker, healthy sidecar served");
}

# the details of some answers

is($resp{'finished-stream'}{body}, "finished\n",
   'finished-stream: first answer intact, late frames dropped');

my $hop = $resp{'hop-headers'};
is($hop->{body}, "5\r\nhello\r\n0\r\n\r\n", 'hop-headers: body as sent');
is(header_value($hop->{headers}, 'X-Ok'), '1', 'hop-headers: others passed');
ok(!grep({ $_->[1] =~ /evil|timeout=1/ } @{$hop->{headers}}),
   'hop-headers: Connection, Keep-Alive, Upgrade dropped');

for my $mode ('cl-short', 'ka/cl-short', 'nb/cl-short') {
    my $r = $resp{$mode};

    ok(header_value($r->{headers}, 'Content-Length') == 100
       && length($r->{body}) == 10,
       "$mode: 10 of 100 bytes, then the connection closed");
}

is($resp{'cl-long'}{body}, '01234', 'cl-long: body cut at Content-Length');
is($resp{'nb/cl-long'}{body}, '01234',
   'nb/cl-long: body cut at Content-Length');

unlike($t->read_file('error.log'), qr/^2000\/01\/01/m,
       'lf-in-name: no line forged in error.log');
like($t->read_file('error.log'), qr/invalid header name "X-Evil\\x0a\.\.\."/i,
     'lf-in-name: the name logged up to the LF');

ok($resp{'ka/cl-short'}{time} < 3,
   'ka/cl-short: the keepalive connection closed at once');

# never-read: the request ring is never read, nothing comes back; the
# worker goes on serving others and answers 504 after the timeouts

my $never = $t->run_sidecar($evil, 'never-read',
                            '%%TESTDIR%%/never-read.sock');

$t->mark_log();
my $t0 = time();

my @s = (
    http($p, "GET /never-read/1 HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\n\r\n", start => 1),
    http($p, "POST /never-read/2 HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\nContent-Length: " . length($body)
             . "\r\n\r\n" . $body, start => 1),
);

my ($st, $h, $b) = parse_response(http_post($p, '/echo/', 'meanwhile'));
ok("$st $b" eq '200 meanwhile' && time() - $t0 < 1,
   'never-read: healthy sidecar served meanwhile');

my @st = map { (parse_response(http_end($_)))[0] // 'none' } @s;
my $el = time() - $t0;

is("@st", '504 504', 'never-read: GET and POST get 504');
ok($el > 1.5 && $el < 5, 'never-read: at the read and send timeouts')
    or diag("took $el s");
ok($t->wait_log(qr/\[error\].*upstream timed out.*while sending request/),
   'never-read: send timeout logged');

# flood: after its answer the sidecar fills ring 1 with late frames for
# the finished stream as fast as nginx drains it, for 2 s; the answer and
# other requests must not wait for the flood to end

my $flood = $t->run_sidecar($evil, 'flood', '%%TESTDIR%%/flood.sock');
my $rss0 = proc_rss_kb($worker);

$t0 = time();
($st, $h, $b) = parse_response(http_get($p, '/flood/'));
$el = time() - $t0;
is("$st $b", "200 ok 1\n", 'flood: answer intact');
ok($el < 1, 'flood: answer not held up by the flood') or diag("took $el s");

$t0 = time();
($st, $h, $b) = parse_response(http_post($p, '/echo/', 'during'));
$el = time() - $t0;
ok("$st $b" eq '200 during' && $el < 1,
   'flood: healthy sidecar served during the flood') or diag("took $el s");

my $done = wait_out($flood, qr/^channel 1: flood: done, \d+ frames/m, 10);
my ($nframes) = ($done // '') =~ /(\d+) frames/;
ok($nframes && $nframes > 1000, 'flood: nginx kept draining')
    or diag($done);

my $rss1 = proc_rss_kb($worker);
ok($rss1 - $rss0 < 32 * 1024, 'flood: worker memory bounded')
    or diag("rss $rss0 -> $rss1 KiB");

($st, $h, $b) = parse_response(http_get($p, '/flood/again'));
is("$st $b", "200 ok 1\n", 'flood: channel kept');

# ftruncate: the seals keep the segment's size

my $ft = $t->run_sidecar($evil, 'ftruncate', '%%TESTDIR%%/ftruncate.sock');

($st, $h, $b) = parse_response(http_get($p, '/ftruncate/'));
is("$st $b", "200 ok 1\n", 'ftruncate: served');
like($t->read_file($ft->{stdout}),
     qr/shrink: EPERM\n.*grow: EPERM\n.*F_SEAL_WRITE: EPERM\n/,
     'ftruncate: shrink, grow and new seals refused');

# efd_nginx is one open file with the sidecar's copy: the sidecar makes
# it blocking, wakes nginx and takes the count back before nginx reads it

my $efd = $t->run_sidecar($evil, 'efd-block-read',
                          '%%TESTDIR%%/efd-block-read.sock');

($st, $h, $b) = parse_response(http_get($p, '/efd-block-read/'));
is("$st $b", "200 ok 1\n", 'efd-block-read: served');
ok(wait_out($efd, qr/^channel 1: efd-block-read: nginx never blocked/m, 5),
   'efd-block-read: nginx never blocked in read()');
($st, $h, $b) = parse_response(http_post($p, '/echo/', 'efd',
                                         { timeout => 3 }));
is("$st $b", '200 efd', 'efd-block-read: worker still serves');

# leaks: one channel per sidecar is open, each a segment and two
# eventfds; when the sidecars go, nginx closes them all but echo's

my $nside = keys(%sidecar) + 5;

is(nsegments($worker), $nside, 'one segment per open channel');
is(neventfds($worker), $efd0 + 2 * $nside, 'an eventfd and a pipe per open channel');

$t->kill_sidecar($_, 'TERM') for values %sidecar, $never, $flood, $ft, $efd;

my $end = time() + 5;
sleep(0.05) while nsegments($worker) != 1 && time() < $end;

is(nsegments($worker), 1, 'sidecars gone: their segments unmapped');
is(neventfds($worker), $efd0 + 2, 'sidecars gone: their wake-up fds closed');

($st, $h, $b) = parse_response(http_post($p, '/echo/', 'still here'));
is("$st $b", '200 still here', 'healthy sidecar served after all that');
is(join(' ', $t->worker_pids()), join(' ', @workers), 'same worker at end');


# nginx wakes a sidecar through a pipe whose write end only nginx holds:
# the sidecar makes its read end blocking, the pipe 4 KiB, never reads it
# and says it sleeps after every request; nginx's writes fill the pipe,
# then get EAGAIN, and the worker goes on

my $ebw = $t->run_sidecar($evil, 'efd-block-write',
                          '%%TESTDIR%%/efd-block-write.sock');

my $full = 0;
my $served = 0;
my $end_full = time() + 60;

while (!$full && time() < $end_full) {
    for (1 .. 200) {
        ($st) = parse_response(http_get($p, '/efd-block-write/',
                                        { timeout => 3 }));
        $served++ if defined $st && $st eq '200';
    }

    open my $fh, '<', $ebw->{stdout} or last;
    $full = grep { /wake-up pipe full/ } <$fh>;
    close $fh;
}

ok($full, "efd-block-write: wake-up pipe filled ($served requests)");

($st, $h, $b) = parse_response(http_post($p, '/echo/', 'efd',
                                         { timeout => 3 }));
is("$st $b", '200 efd', 'efd-block-write: worker still serves');

($st) = parse_response(http_get($p, '/efd-block-write/', { timeout => 3 }));
is($st, '200', 'efd-block-write: that channel still served');
is(join(' ', $t->worker_pids()), join(' ', @workers),
   'efd-block-write: same worker');


sub sock_name {
    my ($mode) = @_;

    (my $s = $mode) =~ s{/}{-}g;

    return "$s.sock";
}


# an error.log line (after the mark) at this level, with the text and
# the socket's path
sub wait_line {
    my ($t, $level, $text, $sock) = @_;

    my $end = time() + 3;

    while (time() < $end) {
        for my $l (split /\n/, $t->read_log()) {
            return 1 if index($l, "[$level]") >= 0 && index($l, $text) >= 0
                        && index($l, $sock) >= 0;
        }

        sleep(0.02);
    }

    diag($t->read_log());

    return 0;
}


# wait until a sidecar's stdout matches; returns the match or undef
sub wait_out {
    my ($h, $re, $timeout) = @_;

    my $end = time() + ($timeout || 3);

    while (time() < $end) {
        my $out = $t->read_file($h->{stdout});
        return $& if $out =~ $re;
        sleep(0.02);
    }

    diag($t->read_file($h->{stdout}));

    return undef;
}


# channel segments mapped in a process
sub nsegments {
    my ($pid) = @_;

    open my $fh, '<', "/proc/$pid/maps" or return -1;
    my $n = grep { m{/memfd:ngx_http_shm } } <$fh>;
    close $fh;

    return $n;
}


sub rss_anon_kb {
    my ($pid) = @_;

    open my $fh, '<', "/proc/$pid/status" or return 0;
    my ($kb) = map { /^RssAnon:\s+(\d+)/ ? $1 : () } <$fh>;
    close $fh;

    return $kb // 0;
}


sub neventfds {
    my ($pid) = @_;

    opendir my $dh, "/proc/$pid/fd" or return -1;
    my $n = grep { (readlink("/proc/$pid/fd/$_") // '') =~ /eventfd|^pipe:/ }
            grep { /^\d+$/ } readdir $dh;
    closedir $dh;

    return $n;
}
