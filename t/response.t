#!/usr/bin/perl

# What the client gets: duplicate response headers, HTTP/2 clients
# (h2c with prior knowledge, through curl), HEAD over HTTP/2.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ShmTest;

plan(skip_all => 'curl without HTTP/2')
    unless `curl -V 2>/dev/null` =~ /HTTP2/;

my $t = ShmTest->new()->write_config(<<'EOF');
events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        listen 127.0.0.1:%%PORT_1%% http2;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }
}
EOF

$t->plan(10);
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my ($st, $h, $b) = parse_response(http_get(port(0), '/c',
                                           'X-Echo-Set-Cookie' => 3));
is($st, 200, 'cookies status');
is(join('|', map { $_->[1] } grep { lc $_->[0] eq 'set-cookie' } @$h),
   'a=1; Path=/|b=2; Path=/|c=3; HttpOnly', 'three set-cookie kept in order');

sub curl {
    my (@args) = @_;
    open(my $fh, '-|', 'curl', '-s', '-i', '--max-time', '10',
         '--http2-prior-knowledge', @args) or die "curl: $!";
    local $/;
    my $out = <$fh> // '';
    close $fh;
    my ($head, $body) = split /\r\n\r\n/, $out, 2;
    return ($head // '', $body // '');
}

my $url = 'http://127.0.0.1:' . port(1);

my ($head, $body) = curl("$url/h2?x=1");
like($head, qr{^HTTP/2 200}, 'h2 get');
like($head, qr{^x-echo-uri: /h2\?x=1\r?$}mi, 'h2 uri');

($head, $body) = curl('--data-binary', 'h2-body-' . ('z' x 100000),
                      "$url/p");
is($body, 'h2-body-' . ('z' x 100000), 'h2 post echoed');
like($head, qr{^x-echo-method: POST\r?$}mi, 'h2 post method');

($head, $body) = curl('-H', 'X-Echo-Set-Cookie: 2', "$url/c");
is(scalar(() = $head =~ /^set-cookie:/mig), 2, 'h2 two set-cookie');

($head, $body) = curl('-I', "$url/head");
like($head, qr{^HTTP/2 200}, 'h2 head');
is($body, '', 'h2 head no body');

($head, $body) = curl('-H', 'X-Echo-Size: 300000', "$url/big");
is(length($body), 300000, 'h2 large response');
