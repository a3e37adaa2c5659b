#!/usr/bin/perl

# shm_pass: requests through the echo sidecar, statuses, methods, URIs,
# bodies, keepalive, HTTP/1.0, an upstream{} group.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ShmTest;

my $t = ShmTest->new()->write_config(<<'EOF');
events {}

http {
    upstream sc {
        server unix:%%TESTDIR%%/echo.sock;
    }

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }

        location /up/ {
            shm_pass sc;
        }
    }
}
EOF

$t->plan(37);
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my ($st, $h, $b);

($st, $h, $b) = parse_response(http_get($p, '/'));
is($st, 200, 'get');
is(header_value($h, 'X-Echo-Method'), 'GET', 'get method');
is(header_value($h, 'X-Echo-URI'), '/', 'get uri');
is($b, '', 'get empty body');

($st, $h, $b) = parse_response(http_post($p, '/post', 'hello, world'));
is($st, 200, 'post');
is(header_value($h, 'X-Echo-Method'), 'POST', 'post method');
is($b, 'hello, world', 'post body echoed');

my $bin = join '', map { chr } 0 .. 255;
($st, $h, $b) = parse_response(http_post($p, '/bin', $bin x 64));
is($b, $bin x 64, 'binary body echoed');

($st, $h, $b) = parse_response(http($p, "POST /ch HTTP/1.1\r\n"
    . "Host: localhost\r\nConnection: close\r\n"
    . "Transfer-Encoding: chunked\r\n\r\n"
    . "5\r\nhello\r\n7\r\n chunky\r\n0\r\n\r\n"));
is($b, 'hello chunky', 'chunked request body echoed');

($st, $h, $b) = parse_response(http($p, "PUT /put HTTP/1.1\r\n"
    . "Host: localhost\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"));
is(header_value($h, 'X-Echo-Method') . " $b", 'PUT abc', 'put');

($st, $h, $b) = parse_response(http($p, "DELETE /del HTTP/1.1\r\n"
    . "Host: localhost\r\nConnection: close\r\n\r\n"));
is(header_value($h, 'X-Echo-Method'), 'DELETE', 'delete');

# statuses from the sidecar

for my $s (201, 404, 500, 599) {
    ($st, $h, $b) = parse_response(http_post($p, '/s', "s$s",
                                             'X-Echo-Status' => $s));
    is("$st $b", "$s s$s", "status $s");
}

# the raw request URI, query and percent-encoded bytes kept

my $uri = '/a%20b/%41%2f%E2%82%AC/../c?x=1&y=%20z&e=%26&&';
($st, $h, $b) = parse_response(http_get($p, $uri));
is(header_value($h, 'X-Echo-URI'), $uri, 'raw uri with query');

($st, $h, $b) = parse_response(http_get($p, '/q?'));
is(header_value($h, 'X-Echo-URI'), '/q?', 'empty query');

# responses without a body

($st, $h, $b) = parse_response(http_head($p, '/head', 'X-Echo-Size' => 100));
is($st, 200, 'head');
is(header_value($h, 'X-Echo-Method'), 'HEAD', 'head method');
is($b, '', 'head no body');

for my $s (204, 304) {
    my $s1 = http($p, "GET /$s HTTP/1.1\r\nHost: localhost\r\n"
                      . "X-Echo-Status: $s\r\n\r\n", start => 1);
    ($st, $h, $b) = parse_response(http_read_response($s1));
    is("$st $b", "$s ", "$s no body");

    http($p, "GET /after$s HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\n\r\n", socket => $s1, start => 1);
    ($st, $h, $b) = parse_response(http_end($s1));
    is(header_value($h, 'X-Echo-URI'), "/after$s", "$s then keepalive");
}

# keepalive

my $s = http($p, "POST /k1 HTTP/1.1\r\nHost: localhost\r\n"
                 . "Content-Length: 3\r\n\r\none", start => 1);
($st, $h, $b) = parse_response(http_read_response($s));
is("$st $b", '200 one', 'keepalive first');

http($p, "POST /k2 HTTP/1.1\r\nHost: localhost\r\n"
         . "Content-Length: 3\r\n\r\ntwo", socket => $s, start => 1);
($st, $h, $b) = parse_response(http_read_response($s));
is("$st $b", '200 two', 'keepalive second');

http($p, "GET /k3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
     socket => $s, start => 1);
($st, $h, $b) = parse_response(http_end($s));
is(header_value($h, 'X-Echo-URI'), '/k3', 'keepalive third');

# pipelined on one connection

my $r = http($p, "GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                 . "POST /p2 HTTP/1.1\r\nHost: localhost\r\n"
                 . "Content-Length: 2\r\n\r\nxy"
                 . "GET /p3 HTTP/1.1\r\nHost: localhost\r\n"
                 . "Connection: close\r\n\r\n");
my @uris = $r =~ /^X-Echo-URI: (\S+)/mgi;
is("@uris", '/p1 /p2 /p3', 'pipelined');

# HTTP/1.0

$r = http($p, "GET /old?v=1 HTTP/1.0\r\n\r\n");
($st, $h, $b) = parse_response($r);
like($r, qr{^HTTP/1\.1 200 }, 'http/1.0 status line');
is(header_value($h, 'X-Echo-URI'), '/old?v=1', 'http/1.0 uri');
ok(!header_value($h, 'Transfer-Encoding'), 'http/1.0 not chunked');

$r = http($p, "POST /old HTTP/1.0\r\nContent-Length: 9\r\n\r\nold post!");
($st, $h, $b) = parse_response($r);
is($b, 'old post!', 'http/1.0 post body');

# an upstream{} group of one sidecar

($st, $h, $b) = parse_response(http_post($p, '/up/x?y', 'via group'));
is($st, 200, 'upstream group status');
is(header_value($h, 'X-Echo-URI'), '/up/x?y', 'upstream group uri');
is($b, 'via group', 'upstream group body');

# a larger body than one frame, in both directions

my $big = join '', map { sprintf "%07d\n", $_ } 1 .. 32768;
($st, $h, $b) = parse_response(http_post($p, '/big', $big));
ok($b eq $big, 'post 256k echoed');

($st, $h, $b) = parse_response(http_get($p, '/size', 'X-Echo-Size' => 100000));
is($b, substr(join('', 'a' .. 'z') x 3847, 0, 100000), 'get 100000 bytes');
