#!/usr/bin/perl

# A sidecar that breaks the protocol (t/tools/evil-sidecar.c, one mode
# per location): nginx closes its channel with an [error] naming the
# violation, the request gets 502 (504 if nothing came), the worker
# neither crashes, hangs nor leaks, and a healthy sidecar is still served.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use ShmTest;

# mode => [status, what error.log must say after the request]; a plain
# string is a violation named in the channel's "channel closed" line

my @modes = (
    [ 'refuse',            502, qr/refused the channel/ ],
    [ 'ack-junk',          502, 'sidecar sent an invalid control message' ],
    [ 'ack-close',         502, qr/sidecar closed the channel/ ],
    [ 'garbage',           502, 'nonzero reserved field in frame' ],
    [ 'len-past-max',      502, 'frame longer than max_frame' ],
    [ 'unknown-type',      502, 'unknown frame type' ],
    [ 'wrong-direction',   502, 'frame type not allowed from a sidecar' ],
    [ 'slot-out-of-range', 502, 'stream slot out of range' ],
    [ 'never-issued',      502, 'frame for a stream never opened' ],
    [ 'finished-stream',   200, undef ],
    [ 'huge-nfields',      502, qr/invalid header block: size 32, 65535 f/ ],
    [ 'cr-in-name',        502, qr/sidecar sent invalid header name/ ],
    [ 'lf-in-value',       502, qr/sidecar sent invalid value in header/ ],
    [ 'status-99',         502, qr/sidecar sent invalid status 99\b/ ],
    [ 'status-1000',       502, qr/sidecar sent invalid status 1000\b/ ],
    [ 'cl-short',          200, qr/upstream prematurely closed connection/ ],
    [ 'cl-long',           200, qr/sent more data than specified/ ],
    [ 'body-over-credit',  502, 'body beyond the credit' ],
    [ 'credit-overflow',   502, 'credit beyond the window' ],
    [ 'never-read',        504, qr/upstream timed out/ ],
    [ 'reset',             502, qr/reset stream \d+/ ],
    [ 'body-before-head',  502, 'body frame before the response head' ],
    [ 'head-after-head',   502, 'response head after the head' ],
    [ 'head-short',        502, 'head frames shorter than the head block' ],
    [ 'bad-pad',           502, 'bad pad frame' ],
    [ 'tail-out-of-range', 502, 'ring tail out of range' ],
    [ 'req-head-range',    504, 'request ring head out of range' ],
    [ 'socket-junk',       502, 'sidecar sent an invalid control message' ],
    [ 'bad-goaway',        502, 'invalid GOAWAY frame' ],
    [ 'ftruncate',         502, qr/sidecar closed the channel/ ],
);

my $locations = join '', map {
    "        location /$_->[0]/ {\n"
    . "            shm_pass unix:%%TESTDIR%%/$_->[0].sock;\n"
    . "        }\n\n"
} @modes;

my $t = ShmTest->new()->write_config(<<"EOF");
worker_processes 1;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        shm_connect_timeout 2s;
        shm_read_timeout 2s;

$locations        location /echo/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }
}
EOF

my $evil = $t->build() . '/t/tools/evil-sidecar';

plan(skip_all => "no $evil") unless -x $evil;

# per mode: status, log, worker; extra checks below
$t->plan(3 * @modes + 10);

my %sidecar;

for my $m (@modes) {
    $sidecar{$m->[0]} = $t->run_sidecar($evil, $m->[0],
        "%%TESTDIR%%/$m->[0].sock", { may_exit => 1 });
}

$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my @workers = $t->worker_pids();
my $worker = $workers[0];
# the baseline once the harness's start-up probe connection is closed
my $fds0 = nfds($worker);

for (1 .. 10) {
    sleep(0.05);
    my $n = nfds($worker);
    $fds0 = $n if defined $n && defined $fds0 && $n < $fds0;
}

my %resp;

for my $m (@modes) {
    my ($mode, $status, $expect) = @$m;
    my $sock = $t->testdir() . "/$mode.sock";

    $t->mark_log();

    my $t0 = time();
    my $raw = http_get($p, "/$mode/");
    my ($st, $h, $b) = parse_response($raw);

    $resp{$mode} = { raw => $raw, status => $st, headers => $h,
                     body => $b, time => time() - $t0 };

    is($st, $status, "$mode: $status");

    if (!defined $expect) {
        sleep(0.2);
        unlike($t->read_log(), qr/\[error\]|channel closed/,
               "$mode: nothing logged");

    } elsif (ref $expect) {
        ok($t->wait_log(qr/^.*\[(?:error|warn)\].*$expect.*$/m, 3),
           "$mode: logged");

    } else {
        my $line = "sidecar unix:$sock: $expect, channel closed";

        ok($t->wait_log(qr/^.*\[error\].*\Q$line\E.*$/m, 3),
           "$mode: \"$expect\" logged");
    }

    is(join(' ', $t->worker_pids()), join(' ', @workers),
       "$mode: worker still there");
}

# details of some modes

my $t1 = time();
my ($st1) = parse_response(http_get($p, '/ack-close/again'));
my $el1 = time() - $t1;
ok($st1 == 502 && $el1 < 1,
   'ack-close: the channel is gone, next request 502 at once')
    or diag("$st1 after $el1 s");

is($resp{'finished-stream'}{body}, 'first response',
   'finished-stream: first response intact, late frame dropped');

my $short = $resp{'cl-short'};
ok(header_value($short->{headers}, 'Content-Length') == 100
   && length($short->{body}) < 100,
   'cl-short: connection closed before the announced length')
    or diag(length($short->{body}) . " body bytes");

is($resp{'cl-long'}{body}, '01234', 'cl-long: body cut at Content-Length');

my $el = $resp{'never-read'}{time};
ok($el > 1.5 && $el < 4, 'never-read: 504 at shm_read_timeout')
    or diag("took $el s");

is($t->wait_sidecar($sidecar{ftruncate}, 5), 0,
   'ftruncate: the seals refused shrinking and growing');

# the channels that stayed open close when their sidecars go; then the
# worker holds no more descriptors and no segment than before

for my $m (@modes) {
    $t->kill_sidecar($sidecar{$m->[0]}, 'TERM')
        unless defined $sidecar{$m->[0]}{status};
}

my $end = time() + 5;
sleep(0.05) while nfds($worker) != $fds0 && time() < $end;

SKIP: {
    skip 'cannot read /proc/PID/fd of the worker', 2 unless defined $fds0;

    is(nfds($worker), $fds0, 'no descriptor leaked');
    is(nsegments($worker), 0, 'no segment left mapped');
}

my ($st, $h, $b) = parse_response(http_post($p, '/echo/', 'still here'));
is("$st $b", '200 still here', 'healthy sidecar served after all that');
is(join(' ', $t->worker_pids()), join(' ', @workers), 'same worker at end');


# open descriptors of a process, or undef
sub nfds {
    my ($pid) = @_;

    opendir my $dh, "/proc/$pid/fd" or return undef;
    my $n = grep { /^\d+$/ } readdir $dh;
    closedir $dh;

    return $n;
}


# channel segments mapped in a process
sub nsegments {
    my ($pid) = @_;

    open my $fh, '<', "/proc/$pid/maps" or return undef;
    my $n = grep { m{/memfd:ngx_http_shm} } <$fh>;
    close $fh;

    return $n;
}
