#!/usr/bin/perl

# Buffered responses under every shape of the event pipe's buffers: the
# body reaches the pipe as slices of the chunks it arrived in (no copy),
# so the sizes of shm_buffers, shm_busy_buffers_size and the temp file
# settings, slow and rate-limited clients, keepalive and clients that go
# away mid-body must all still give byte-exact bodies, and leave nothing
# behind.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::MD5 qw(md5_hex);
use IO::Select;
use List::Util qw(max);
use Time::HiRes qw(time sleep);
use ShmTest;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 1;

events {}

http {
    client_max_body_size 10m;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        shm_read_timeout 30s;
        shm_send_timeout 30s;

        location /b1k/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffer_size 1k;
            shm_buffers 3 1k;
            shm_busy_buffers_size 1k;
            shm_temp_file_write_size 1k;
        }

        location /b4k/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffers 4 4k;
        }

        location /b64k/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffers 8 64k;
            shm_busy_buffers_size 128k;
        }

        location /notemp/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffers 4 4k;
            shm_max_temp_file_size 0;
        }

        location /temp/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffers 4 4k;
            shm_temp_file_write_size 8k;
        }

        location /rate/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffers 4 16k;
            limit_rate 4m;
        }

        location /writes/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_buffers 8 4k;
            error_log %%TESTDIR%%/writes.log debug;
        }

        location /seg/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_segment_size 64k;
            shm_buffers 8 64k;
            shm_busy_buffers_size 128k;
        }
    }
}
EOF

my @loc = qw(b1k b4k b64k notemp temp rate seg);
my @sizes = (0, 1, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536,
             65537, 300001);
my @chunks = (1, 7, 64);

$t->plan(@loc * 3 + 4 * 3 + 3);
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my $MiB = 1024 * 1024;

# every size, in one piece and in many, on every location

for my $l (@loc) {
    my ($bad, $n) = ('', 0);

    for my $size (@sizes) {
        for my $c (@chunks) {
            my ($st, $h, $b) = parse_response(http_get($p, "/$l/get",
                'X-Echo-Size' => $size, 'X-Echo-Chunks' => $c,
                { timeout => 20 }));
            $n++;
            $bad .= " $size/$c:" . ($st // 'none') . '/' . length($b)
                unless defined $st && $st == 200 && $b eq pattern($size);
        }
    }

    is($bad, '', "$l: $n responses of every size byte-exact");

    # a 2 MiB + 5 response and a 1 MiB echo

    my ($st, $h, $b) = parse_response(http_get($p, "/$l/big",
        'X-Echo-Size' => 2 * $MiB + 5, { timeout => 30 }));
    ok(defined $st && $st == 200 && length $b == 2 * $MiB + 5
       && md5_hex($b) eq md5_hex(pattern(2 * $MiB + 5)),
       "$l: 2 MiB response byte-exact");

    my $up = join '', map { chr(($_ * 13 + ($_ >> 9)) & 0xff) } 0 .. $MiB;
    ($st, $h, $b) = parse_response(http_post($p, "/$l/up", $up,
                                             { timeout => 30 }));
    ok(defined $st && $st == 200 && $b eq $up, "$l: 1 MiB echo byte-exact");
}

# keepalive: many responses on one connection

for my $l (qw(b1k b4k b64k temp)) {
    my $s = http($p, '', start => 1);
    my $ok = 0;

    for my $i (1 .. 20) {
        my $size = 1000 + $i * 7919;
        my $want = pattern($size);

        # an echo has no Content-Length: chunked, ended by the sidecar's
        # end of stream, which must not wait for a timeout

        if ($i % 2) {
            http($p, "GET /$l/ka/$i HTTP/1.1\r\nHost: localhost\r\n"
                     . "X-Echo-Size: $size\r\nX-Echo-Chunks: 3\r\n\r\n",
                 socket => $s, start => 1);
        } else {
            $want = uc $want;
            http($p, "POST /$l/ka/$i HTTP/1.1\r\nHost: localhost\r\n"
                     . "Content-Length: $size\r\n\r\n$want",
                 socket => $s, start => 1);
        }

        my ($st, $h, $b) = parse_response(http_read_response($s,
                                                             timeout => 5));
        $ok++ if defined $st && $st == 200 && $b eq $want;
    }

    close $s;
    is($ok, 20, "$l: 20 responses on one keepalive connection");
}

# a slow client: 64k read, then 1.5 s of nothing, then the rest; without
# a temp file the pipe stops reading, with one it writes the rest there

for my $l (qw(notemp temp b1k b64k)) {
    my $size = 3 * $MiB + 11;
    my $s = http($p, "GET /$l/slow HTTP/1.1\r\nHost: localhost\r\n"
                     . "Connection: close\r\nX-Echo-Size: $size\r\n"
                     . "X-Echo-Chunks: 50\r\n\r\n", start => 1);
    my $raw = '';
    my $sel = IO::Select->new($s);
    my $t0 = time();

    while (length $raw < 65536 && time() < $t0 + 10) {
        next unless $sel->can_read(1);
        my $n = sysread($s, $raw, 65536 - length $raw, length $raw);
        last unless $n;
    }

    sleep(1.5);

    $raw .= http_end($s, timeout => 30);
    my ($st, $h, $b) = parse_response($raw);
    ok(defined $st && $st == 200 && length $b == $size
       && md5_hex($b) eq md5_hex(pattern($size)),
       "$l: slow client byte-exact");
}

# a client that goes away mid-body, on every kind of pipe; the worker
# goes on serving, and the sanitizers' leak check at exit sees whether
# the slices it held were all given back

for my $l (qw(notemp temp b1k rate)) {
    for my $i (1 .. 5) {
        my $s = http($p, "GET /$l/gone/$i HTTP/1.1\r\nHost: localhost\r\n"
                         . "X-Echo-Size: 4000000\r\n\r\n", start => 1);
        my $sel = IO::Select->new($s);
        my ($buf, $got, $t0) = ('', 0, time());

        while ($got < 20000 * $i && time() < $t0 + 10) {
            next unless $sel->can_read(1);
            my $n = sysread($s, $buf, 65536);
            last unless $n;
            $got += $n;
        }

        close $s;
    }

    my ($st, $h, $b) = parse_response(http_get($p, "/$l/after",
        'X-Echo-Size' => 100000, { timeout => 20 }));
    ok(defined $st && $st == 200 && $b eq pattern(100000),
       "$l: served after clients went away mid-body");
}

# a rate-limited client takes about as long as the rate says

my $t0 = time();
my ($st, $h, $b) = parse_response(http_get($p, '/rate/timed',
    'X-Echo-Size' => 6 * $MiB, { timeout => 30 }));
my $el = time() - $t0;
ok(defined $st && $st == 200 && md5_hex($b) eq md5_hex(pattern(6 * $MiB)),
   'rate: 6 MiB byte-exact');
cmp_ok($el, '>', 0.9, 'rate: limit_rate holds (6 MiB at 4m/s)');

# the default shm_busy_buffers_size lets one write to the client carry
# all the buffers but two (24k of 8 4k), where proxy_pass's carries two

($st, $h, $b) = parse_response(http_get($p, '/writes/1m',
    'X-Echo-Size' => $MiB, { timeout => 20 }));
my @w = $t->read_file('writes.log') =~ /writev: (\d+) of/g;
my $max = max(0, @w);
ok(defined $st && $st == 200 && $b eq pattern($MiB)
   && $max > 16384 && $max <= 24 * 1024 + 512,
   "default busy size: writes to the client up to 24k (largest $max, "
   . @w . ' writes)');

$t->done();
