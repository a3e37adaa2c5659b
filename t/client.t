#!/usr/bin/perl

# Bad and unusual input from HTTP clients, with shm_pass in front of the
# echo sidecar (started with -l: it logs "start METHOD URI" for every
# request its handler gets).
#
# What nginx rejects keeps nginx's own answer and error-log line and never
# reaches the sidecar: after each such request a probe request is sent, and
# the sidecar's log must show the probe and nothing else.  What nginx
# accepts reaches the sidecar as nginx accepted it: the echoed bodies are
# compared byte for byte, and the sidecar's log shows each request once,
# in order.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use IO::Select;
use Test::More;
use Time::HiRes qw(time);
use ShmTest;

# large_client_header_buffers 4 2k: a request line or a header line of
# LARGE bytes with its CRLF is the longest nginx takes
use constant LARGE => 2048;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 1;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        client_header_buffer_size 1k;
        large_client_header_buffers 4 2k;
        client_max_body_size 4m;
        client_body_buffer_size 8k;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }

        location /small/ {
            client_max_body_size 1k;
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }
}
EOF

$t->plan(147);

my $sc = $t->run_sidecar('ngxshm-echo', '-l', '%%TESTDIR%%/echo.sock');
$t->run();

my $port = port(0);
my $seen = 0;
my $nprobe = 0;


# the requests the sidecar's handler got since the last call
sub sidecar_new {
    my $log = $t->read_file($sc->{stderr});
    my $new = substr($log, $seen);

    $seen = length $log;

    return [ $new =~ /^ngxshm-echo: start (.*)$/mg ];
}


# after a request nginx rejected: a probe request is answered by the
# sidecar, and its log shows the probe and nothing before it
sub sidecar_saw_only_probe {
    my ($name) = @_;

    my $uri = '/probe/' . ++$nprobe;
    my ($st, $h) = parse_response(http_get($port, $uri));

    is_deeply([ $st, header_value($h, 'X-Echo-URI'), sidecar_new() ],
              [ 200, $uri, [ "GET $uri" ] ],
              "$name: the sidecar did not see it");
}


# a request nginx answers itself: status, the error-log line naming the
# cause, and the sidecar never saw it
sub rejected {
    my ($name, $request, $status, $log, $body_re) = @_;

    $t->mark_log();

    my $raw = http($port, $request);
    my ($st, undef, $body) = parse_response($raw);

    is($st, $status, "$name: $status");
    ok(defined $t->wait_log(qr/\Q$log\E/), "$name: error.log: $log")
        or diag($t->read_log());
    like($body, $body_re, "$name: nginx's page") if $body_re;

    sidecar_saw_only_probe($name);

    return $raw;
}


# read from a connection until $re matches what was read (bounded)
sub read_until {
    my ($s, $re, $timeout) = @_;

    my $buf = '';
    my $sel = IO::Select->new($s);
    my $end = time() + ($timeout || 10);

    while ($buf !~ $re) {
        my $left = $end - time();
        last if $left <= 0;
        next unless $sel->can_read($left);

        my $n = sysread($s, $buf, 65536, length $buf);
        last if defined $n && $n == 0;
        last if !defined $n && $! != EAGAIN && $! != EWOULDBLOCK
                && $! != EINTR;
    }

    return $buf;
}


sub chunked {
    my (@pieces) = @_;

    return join('', map { sprintf("%x\r\n", length $_) . "$_\r\n" } @pieces)
        . "0\r\n\r\n";
}


my $h = "Host: localhost\r\n";
my $close = "Connection: close\r\n";


## requests nginx rejects

# the request line

rejected('garbage request line', "GARBAGE\r\n\r\n",
    400, 'client sent invalid method');
rejected('lowercase method', "get /rej HTTP/1.1\r\n$h\r\n",
    400, 'client sent invalid method');
rejected('relative URI', "GET rej HTTP/1.1\r\n$h\r\n",
    400, 'client sent invalid request');
rejected('space in the URI', "GET /rej x HTTP/1.1\r\n$h\r\n",
    400, 'client sent invalid request');
rejected('control character in the URI', "GET /rej\x01 HTTP/1.1\r\n$h\r\n",
    400, 'client sent invalid request');
rejected('URI above the root', "GET /../rej HTTP/1.1\r\n$h\r\n",
    400, 'client sent invalid request');
rejected('HTTP/2.0 request line', "GET /rej HTTP/2.0\r\n$h\r\n",
    505, 'client sent invalid version');
rejected('CONNECT', "CONNECT localhost:80 HTTP/1.1\r\n$h\r\n",
    400, 'client sent invalid request');
rejected('TRACE', "TRACE /rej HTTP/1.1\r\n$h\r\n",
    405, 'client sent TRACE method');

rejected('URI one byte over large_client_header_buffers',
    "GET /" . ('u' x (LARGE - length("GET / HTTP/1.1\r\n") + 1))
    . " HTTP/1.1\r\n$h\r\n",
    414, 'client sent too long URI', qr/414 Request-URI Too Large/);

# header lines

rejected('space in a header name',
    "GET /rej HTTP/1.1\r\n${h}Bad Name: v\r\n\r\n",
    400, 'client sent invalid header line: "Bad\x20...');
rejected('obsolete line folding',
    "GET /rej HTTP/1.1\r\n${h}X-A: b\r\n c\r\n\r\n",
    400, 'client sent invalid header line: "\x20...');
rejected('NUL in a header value', "GET /rej HTTP/1.1\r\n${h}X-A: b\0c\r\n\r\n",
    400, 'client sent invalid header line: "X-A: b\x00...');
rejected('HTTP/1.1 without Host', "GET /rej HTTP/1.1\r\n\r\n",
    400, 'client sent HTTP/1.1 request without "Host" header');
rejected('two Host headers', "GET /rej HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    400, 'client sent duplicate host header');
rejected('invalid Host', "GET /rej HTTP/1.1\r\nHost: a/b\r\n\r\n",
    400, 'client sent invalid host header');

my $raw = rejected('header line one byte over large_client_header_buffers',
    "GET /rej HTTP/1.1\r\n${h}X-Long: "
    . ('v' x (LARGE - length("X-Long: \r\n") + 1)) . "\r\n\r\n",
    400, 'client sent too long header line: "X-Long: vvv',
    qr/400 Request Header Or Cookie Too Large/);
like($raw, qr{^HTTP/1\.1 400 Bad Request\r\n},
     'too long header line: the status line says 400 Bad Request');

rejected('headers over all large_client_header_buffers',
    "GET /rej HTTP/1.1\r\n$h"
    . join('', map { "X-H$_: " . ('v' x 1500) . "\r\n" } 1 .. 6) . "\r\n",
    400, 'client sent too long header line: "X-H',
    qr/400 Request Header Or Cookie Too Large/);

# the body's framing

rejected('Content-Length: abc',
    "POST /rej HTTP/1.1\r\n${h}Content-Length: abc\r\n\r\n",
    400, 'client sent invalid "Content-Length" header');
rejected('Content-Length: -1',
    "POST /rej HTTP/1.1\r\n${h}Content-Length: -1\r\n\r\n",
    400, 'client sent invalid "Content-Length" header');
rejected('Content-Length above 2^63',
    "POST /rej HTTP/1.1\r\n${h}Content-Length: 99999999999999999999\r\n\r\n",
    400, 'client sent invalid "Content-Length" header');
rejected('two Content-Length headers',
    "POST /rej HTTP/1.1\r\n${h}Content-Length: 1\r\nContent-Length: 1\r\n"
    . "\r\nx",
    400, 'client sent duplicate header line: "Content-Length: 1"');
rejected('Content-Length and Transfer-Encoding',
    "POST /rej HTTP/1.1\r\n${h}Content-Length: 3\r\n"
    . "Transfer-Encoding: chunked\r\n\r\n" . chunked('abc'),
    400, 'client sent "Content-Length" and "Transfer-Encoding" headers at '
         . 'the same time');
rejected('Transfer-Encoding in HTTP/1.0',
    "POST /rej HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    . chunked('abc'),
    400, 'client sent HTTP/1.0 request with "Transfer-Encoding" header');
rejected('Transfer-Encoding: gzip',
    "POST /rej HTTP/1.1\r\n${h}Transfer-Encoding: gzip\r\n\r\n",
    501, 'client sent unknown "Transfer-Encoding": "gzip"');
rejected('invalid chunk size',
    "POST /rej HTTP/1.1\r\n${h}Transfer-Encoding: chunked\r\n\r\n"
    . "zz\r\nabc\r\n0\r\n\r\n",
    400, 'client sent invalid chunked body');

# client_max_body_size 1k

rejected('Content-Length above client_max_body_size',
    "POST /small/rej HTTP/1.1\r\n${h}Content-Length: 2000\r\n\r\n"
    . ('b' x 2000),
    413, 'client intended to send too large body: 2000 bytes',
    qr/413 Request Entity Too Large/);
rejected('chunked body above client_max_body_size',
    "POST /small/rej HTTP/1.1\r\n${h}Transfer-Encoding: chunked\r\n\r\n"
    . chunked(('b' x 512) x 3),
    413, 'client intended to send too large chunked body: 1024+512 bytes',
    qr/413 Request Entity Too Large/);
$raw = rejected('Expect: 100-continue above client_max_body_size',
    "POST /small/rej HTTP/1.1\r\n${h}Expect: 100-continue\r\n"
    . "Content-Length: 2000\r\n\r\n",
    413, 'client intended to send too large body: 2000 bytes');
like($raw, qr{\AHTTP/1\.1 413 },
     'Expect: 100-continue above the limit: 413 without 100 Continue');

# a body cut short: the client goes away, nobody answers

{
    $t->mark_log();

    my $s = http($port, "POST /rej HTTP/1.1\r\n${h}Content-Length: 100\r\n"
                        . "\r\n" . ('c' x 40), start => 1);
    # nginx has the head and part of the body; then the client leaves
    read_until($s, qr/./, 0.5);
    close $s;

    ok(defined $t->wait_log(qr/\Qclient prematurely closed connection\E/),
       'body cut short: error.log: client prematurely closed connection')
        or diag($t->read_log());
    sidecar_saw_only_probe('body cut short');
}


## requests nginx accepts

# a chunked body: several chunks, chunk extensions, trailers; the
# sidecar gets the body decoded and the headers as the client sent them,
# the trailers dropped as nginx drops them

{
    my @pieces = ('first chunk,', 'x' x 4000, "\0\r\n", 'last');
    my $body = join '', @pieces;
    my $req = join '', map { sprintf("%x", length $pieces[$_]) . ";ext=$_\r\n"
                             . "$pieces[$_]\r\n" } 0 .. $#pieces;
    $req .= "0\r\nX-Trailer: t1\r\nX-Trailer-Two: t2\r\n\r\n";

    my ($st, $hd, $b) = parse_response(http($port,
        "POST /chunked HTTP/1.1\r\n$h${close}Transfer-Encoding: chunked\r\n"
        . "\r\n$req"));

    is($st, 200, 'chunked body: 200');
    ok($b eq $body, 'chunked body: echoed byte for byte')
        or diag(length($b) . ' bytes, expected ' . length $body);

    ($st, $hd, $b) = parse_response(http($port,
        "POST /chunked-headers HTTP/1.1\r\n$h${close}X-Echo-Headers: 1\r\n"
        . "Transfer-Encoding: chunked\r\n\r\n$req"));

    is($st, 200, 'chunked body, headers: 200');
    is(join('|', grep { !/^(?:param|field) / } split /\n/, $b),
       'Host: localhost|Connection: close|X-Echo-Headers: 1'
       . '|Transfer-Encoding: chunked',
       'chunked body: the sidecar sees the request headers, no trailers');
    is_deeply(sidecar_new(), [ 'POST /chunked', 'POST /chunked-headers' ],
              'chunked body: the sidecar saw each once');
}

# Expect: 100-continue: the interim answer, then the body, then the answer

{
    my $body = join '', map { chr($_ % 256) } 0 .. 2999;

    my $s = http($port, "POST /expect HTTP/1.1\r\n$h$close"
                        . "Expect: 100-continue\r\n"
                        . "Content-Length: " . length($body) . "\r\n\r\n",
                 start => 1);
    my $first = read_until($s, qr/\r\n\r\n/);

    is($first, "HTTP/1.1 100 Continue\r\n\r\n",
       'Expect: 100-continue: 100 Continue before the body');
    is_deeply(sidecar_new(), [],
              'Expect: 100-continue: the sidecar has not seen it yet');

    http($port, $body, socket => $s, start => 1);
    my ($st, $hd, $b) = parse_response(http_end($s));

    is($st, 200, 'Expect: 100-continue: 200 after the body');
    ok($b eq $body, 'Expect: 100-continue: body echoed byte for byte');
    is_deeply(sidecar_new(), [ 'POST /expect' ],
              'Expect: 100-continue: the sidecar saw it once');
}

# pipelined requests on one keep-alive connection

{
    my $bin = join '', map { chr } 0 .. 255;
    my @req = (
        [ 'GET',  '/pipe/1', "GET /pipe/1 HTTP/1.1\r\n$h\r\n", '' ],
        [ 'POST', '/pipe/2', "POST /pipe/2 HTTP/1.1\r\n${h}Content-Length: 11"
                             . "\r\n\r\nhello world", 'hello world' ],
        [ 'POST', '/pipe/3', "POST /pipe/3 HTTP/1.1\r\n$h"
                             . "Transfer-Encoding: chunked\r\n\r\n"
                             . chunked('ab', 'cde', $bin), "abcde$bin" ],
        [ 'HEAD', '/pipe/4', "HEAD /pipe/4 HTTP/1.1\r\n$h\r\n", '' ],
        [ 'POST', '/pipe/5', "POST /pipe/5 HTTP/1.1\r\n${h}Content-Length: 0"
                             . "\r\n\r\n", '' ],
        [ 'POST', '/pipe/6', "POST /pipe/6 HTTP/1.1\r\n$h${close}"
                             . "Content-Length: 1024\r\n\r\n" . ($bin x 4),
          $bin x 4 ],
    );

    my $s = http($port, join('', map { $_->[2] } @req), start => 1);

    for my $r (@req) {
        my ($st, $hd, $b) = parse_response(
            http_read_response($s, head => $r->[0] eq 'HEAD'));

        is_deeply([ $st, header_value($hd, 'X-Echo-Method'),
                    header_value($hd, 'X-Echo-URI') ],
                  [ 200, $r->[0], $r->[1] ],
                  "pipelined $r->[0] $r->[1]: answered in order");
        ok($b eq $r->[3], "pipelined $r->[0] $r->[1]: body")
            or diag(length($b) . ' bytes, expected ' . length $r->[3]);
    }

    is(http_end($s), '', 'pipelined: nothing after the last answer');
    is_deeply(sidecar_new(), [ map { "$_->[0] $_->[1]" } @req ],
              'pipelined: the sidecar saw each once, in order');
}

# the longest request line and header line nginx takes

{
    my $uri = '/long/' . ('u' x (LARGE - length("GET /long/ HTTP/1.1\r\n")));
    my $line = "GET $uri HTTP/1.1\r\n";

    is(length $line, LARGE, 'long URI: the request line fills the buffer');

    my ($st, $hd) = parse_response(http($port, "$line$h$close\r\n"));

    is($st, 200, 'long URI: 200');
    ok((header_value($hd, 'X-Echo-URI') // '') eq $uri,
       'long URI: the sidecar got it whole');

    my $v = join '', map { chr(0x21 + $_ % 94) } 0 .. LARGE - 1;
    $v = substr($v, 0, LARGE - length("X-Long: \r\n"));

    ($st, undef, my $b) = parse_response(http($port,
        "GET /long-header HTTP/1.1\r\n${h}X-Long: $v\r\nX-Echo-Headers: 1\r\n"
        . "$close\r\n"));

    is($st, 200, 'long header line: 200');
    ok($b =~ /^X-Long: (.*)$/m && $1 eq $v,
       'long header line: the sidecar got the value whole');
    is_deeply(sidecar_new(), [ "GET $uri", 'GET /long-header' ],
              'long URI and header: the sidecar saw each once');
}

# every byte value in a body, and a body nginx writes to a temp file

{
    my $bin = join '', map { chr } 0 .. 255;
    my $body = $bin x 16;

    my ($st, $hd, $b) = parse_response(http_post($port, '/binary', $body));

    is($st, 200, 'binary body: 200');
    ok($b eq $body, 'binary body: 0..255 x 16 echoed byte for byte');

    # 1 MiB + 1, with a pattern that no shift nor repeat maps to itself
    my $big = join '', map { pack('N', $_ * 2654435761 % 4294967296) }
                       0 .. 262143;
    $big .= 'z';

    $t->mark_log();
    ($st, $hd, $b) = parse_response(http_post($port, '/big', $big,
                                              { timeout => 30 }));

    is($st, 200, 'body above client_body_buffer_size: 200');
    ok(defined $t->wait_log(
           qr/\Qa client request body is buffered to a temporary file\E/),
       'body above client_body_buffer_size: nginx wrote it to a temp file');
    ok($b eq $big, 'body above client_body_buffer_size: echoed byte for byte')
        or diag(length($b) . ' bytes, expected ' . length $big);
    is_deeply(sidecar_new(), [ 'POST /binary', 'POST /big' ],
              'binary and big bodies: the sidecar saw each once');
}

# Content-Length: 0, HEAD

{
    my ($st, $hd, $b) = parse_response(http_post($port, '/empty', ''));

    is_deeply([ $st, header_value($hd, 'X-Echo-Method'), $b ],
              [ 200, 'POST', '' ], 'Content-Length: 0: 200, empty body');

    ($st, $hd, $b) = parse_response(http_post($port, '/empty-headers', '',
                                              'X-Echo-Headers' => 1));
    like($b, qr/^Content-Length: 0$/m,
         'Content-Length: 0: the sidecar sees the header');

    my $s = http($port, "HEAD /head HTTP/1.1\r\n$h\r\n"
                        . "GET /after-head HTTP/1.1\r\n$h$close\r\n",
                 start => 1);
    ($st, $hd, $b) = parse_response(http_read_response($s, head => 1));

    is_deeply([ $st, header_value($hd, 'X-Echo-Method'), $b ],
              [ 200, 'HEAD', '' ], 'HEAD: 200, no body');

    ($st, $hd, $b) = parse_response(http_end($s));

    is_deeply([ $st, header_value($hd, 'X-Echo-URI'), $b ],
              [ 200, '/after-head', '' ],
              'HEAD: the next answer on the connection follows at once');
    is_deeply(sidecar_new(),
              [ 'POST /empty', 'POST /empty-headers', 'HEAD /head',
                'GET /after-head' ],
              'Content-Length: 0 and HEAD: the sidecar saw each once');
}

# what nginx takes but changes: a header with an underscore (dropped,
# ignore_invalid_headers), a header line without a colon (an empty
# value), an absolute URI, an HTTP/0.9 request

{
    $t->mark_log();

    my ($st, $hd, $b) = parse_response(http($port,
        "GET /underscore HTTP/1.1\r\n${h}X_Under: 1\r\nNoColon\r\n"
        . "X-Echo-Headers: 1\r\n$close\r\n"));

    is($st, 200, 'underscore, no colon: 200');
    ok(defined $t->wait_log(qr/\Qclient sent invalid header line: "X_Under\E/),
       'underscore: error.log says the header was dropped');
    is(join('|', grep { !/^(?:param|field) / } split /\n/, $b),
       'Host: localhost|NoColon: |X-Echo-Headers: 1|Connection: close',
       'underscore, no colon: what the sidecar sees');

    ($st, $hd, $b) = parse_response(http($port,
        "GET http://example.com/absolute?q=1 HTTP/1.1\r\n$h$close"
        . "X-Echo-Headers: 1\r\n\r\n"));

    is($st, 200, 'absolute URI: 200');
    like($b, qr{^field uri=/absolute\?q=1$}m,
         'absolute URI: the sidecar gets the URI without scheme and host, '
         . 'as $request_uri');
    like($b, qr{^field path=/absolute$}m,
         'absolute URI: the path nginx parsed');
    like($b, qr{^field server_name=localhost$}m,
         'absolute URI: served by the server nginx chose');

    $raw = http($port, "GET /http09\r\n");

    is($raw, '', 'HTTP/0.9: the empty body, no status line');
    is_deeply(sidecar_new(),
              [ 'GET /underscore', 'GET /absolute?q=1',
                'GET /http09' ],
              'underscore, absolute URI, HTTP/0.9: the sidecar saw each once');
}

# nothing left over: the worker is still fine

sidecar_saw_only_probe('at the end, nothing stray');

$t->done();
