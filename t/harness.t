#!/usr/bin/perl

# Tests of the test harness itself (t/lib/ShmTest.pm): nginx starts with
# the module loaded but unused, the HTTP helpers, reload, a fake sidecar.
# It passes whatever the state of the module, as long as it loads.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ShmTest;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 2;

events {}

http {
    default_type text/html;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            return 200 "ok $request_method $request_uri $server_protocol";
        }

        location /dir {
            return 200 "%%TESTDIR%% %%PORT_0%%";
        }

        location /204 {
            return 204;
        }

        location /chunked {
            sub_filter_types text/plain;
            sub_filter 'ok' 'OK';
            return 200 "ok chunked";
        }

        location /dup {
            add_header X-Dup one;
            add_header X-Dup two;
            return 200 "dup";
        }
    }
}
EOF

$t->plan(30);
$t->run();

my $p = port(0);
my ($st, $h, $b);

# HTTP helpers against nginx's own responses

($st, $h, $b) = parse_response(http_get($p, '/a?b=c'));
is($st, 200, 'get status');
is($b, 'ok GET /a?b=c HTTP/1.1', 'get body');
is(header_value($h, 'content-length'), length $b, 'get content-length');

($st, $h, $b) = parse_response(http_get($p, '/dir'));
is($b, $t->testdir() . " $p", 'placeholders expanded');

($st, $h, $b) = parse_response(http_head($p, '/'));
is($st, 200, 'head status');
is($b, '', 'head no body');

($st, $h, $b) = parse_response(http_post($p, '/p', 'body'));
is($b, 'ok POST /p HTTP/1.1', 'post');

($st, $h, $b) = parse_response(http_get($p, '/', { proto => 'HTTP/1.0' }));
is($b, 'ok GET / HTTP/1.0', 'http/1.0');

($st, $h, $b) = parse_response(http_get($p, '/chunked'));
is(header_value($h, 'Transfer-Encoding'), 'chunked', 'chunked response');
is($b, 'OK chunked', 'chunked decoded');

($st, $h, $b) = parse_response(http_get($p, '/dup'));
is(join(',', header_values($h, 'x-dup')), 'one,two', 'duplicate headers');

# keepalive: one response at a time from one connection

my $s = http($p, "GET /204 HTTP/1.1\r\nHost: localhost\r\n\r\n", start => 1);
($st, $h, $b) = parse_response(http_read_response($s));
is($st, 204, 'keepalive first');
http($p, "GET /chunked HTTP/1.1\r\nHost: localhost\r\n\r\n", socket => $s,
     start => 1);
($st, $h, $b) = parse_response(http_read_response($s));
is($b, 'OK chunked', 'keepalive second, chunked');
http($p, "GET /k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
     socket => $s, start => 1);
($st, $h, $b) = parse_response(http_end($s));
is($b, 'ok GET /k HTTP/1.1', 'keepalive third');

# the parser on its own

($st, $h, $b) = parse_response("HTTP/1.1 100 Continue\r\n\r\n"
    . "HTTP/1.1 201 Created\r\nA: 1\r\nB:2 \r\n  folded\r\nA: 3\r\n"
    . "Transfer-Encoding: chunked\r\n\r\n"
    . "3;ext=1\r\nabc\r\n1\r\n\n\r\n0\r\nTrailer: x\r\n\r\n");
is($st, 201, 'parse 1xx skipped');
is(join('|', map { "$_->[0]=$_->[1]" } @$h), 'A=1|B=2   folded|A=3|'
   . 'Transfer-Encoding=chunked', 'parse headers');
is($b, "abc\n", 'parse chunked');

($st, $h, $b) = parse_response("garbage");
ok(!defined $st, 'parse garbage');

# workers, reload

my @w = $t->worker_pids();
is(scalar @w, 2, 'two workers');
my @n = $t->reload();
is(scalar @n, 2, 'two workers after reload');
ok(!grep({ my $x = $_; grep { $_ == $x } @w } @n), 'workers replaced');
ok(defined proc_rss_kb($n[0]) && proc_rss_kb($n[0]) > 0, 'worker rss');
ok(defined proc_cpu_ticks($n[0]), 'worker cpu ticks');

($st, $h, $b) = parse_response(http_get($p, '/'));
is($st, 200, 'served after reload');

# a fake sidecar: accepts and closes connections

my $sock = $t->testdir() . '/fake.sock';
my $fake = $t->run_sidecar($^X, '-MIO::Socket::UNIX', '-e', <<'EOF',
    my $l = IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 8) or die;
    while (my $c = $l->accept()) { close $c }
EOF
    $sock, { socket => $sock });

ok($fake->{pid} > 0 && -S $sock, 'fake sidecar started');
is($t->kill_sidecar($fake, 'STOP'), 1, 'sidecar stopped');
is($t->kill_sidecar($fake, 'CONT'), 1, 'sidecar continued');
is($t->kill_sidecar($fake, 'TERM'), 15, 'sidecar terminated');

# the log helpers

$t->mark_log();
http_get($p, '/');
$t->stop();
like($t->read_file('error.log'), qr/\[notice\].*(?:exiting|exit)/,
     'error.log written');
unlike($t->read_log(), qr/\[(?:alert|crit|emerg)\]/, 'no alerts at stop');
