#!/usr/bin/perl

# What the sidecar sees: request fields, headers in order with
# duplicates, shm_param, shm_pass_request_headers, shm_pass_request_body,
# many and long headers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Socket::IP;
use IO::Socket::UNIX;
use ShmTest;

# the server fields of a listen socket bound to an IPv6 address and of one
# on a UNIX socket (others are bound to 127.0.0.1)

my $v6 = IO::Socket::IP->new(LocalHost => '::1', LocalPort => 0,
                             Proto => 'tcp', Listen => 1);
my $v6listen = $v6 ? 'listen [::1]:%%PORT_2%%;' : '';
undef $v6;

my $t = ShmTest->new()->write_config(<<'EOF' =~ s/%%V6LISTEN%%/$v6listen/r);
events {}

http {
    large_client_header_buffers 4 16k;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_param METHOD $request_method;
            shm_param LITERAL "a literal value";
            shm_param ARG_A $arg_a if_not_empty;
            shm_param ARG_B $arg_b;
            shm_param EMPTY_SKIPPED $arg_none if_not_empty;
            shm_param EMPTY_KEPT $arg_none;
        }

        location /noheaders {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_pass_request_headers off;
        }

        location /nobody {
            shm_pass unix:%%TESTDIR%%/echo.sock;
            shm_pass_request_body off;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_1%%;
        server_name other.example;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }

    server {
        %%V6LISTEN%%
        listen unix:%%TESTDIR%%/front.sock;
        server_name local.example;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }
}
EOF

$t->plan(34);
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);

# the echo's dump: "name: value" per header, "param NAME=VALUE" per
# shm_param, "field NAME=VALUE" per request field

sub dump_of {
    my ($raw) = @_;

    my ($st, $h, $b) = parse_response($raw);
    my (@headers, @params, %fields);

    for (split /\n/, $b) {
        if (/^param ([^=]*)=(.*)$/s) {
            push @params, "$1=$2";
        } elsif (/^field ([^=]*)=(.*)$/s) {
            $fields{$1} = $2;
        } elsif (/^([^:]*): (.*)$/s) {
            push @headers, [$1, $2];
        }
    }

    return { status => $st, headers => \@headers, params => \@params,
             fields => \%fields, resp => $h, body => $b };
}

sub hdrs {
    my ($d) = @_;

    return join '|', map { "$_->[0]: $_->[1]" } @{$d->{headers}};
}

# request fields

my $s = http($p, "GET /f/a%20b/./c?x=1&y=%41 HTTP/1.1\r\nHost: localhost\r\n"
                 . "Connection: close\r\nX-Echo-Headers: 1\r\n\r\n",
             start => 1);
my $cport = $s->sockport();
my $d = dump_of(http_end($s));
my $f = $d->{fields};

is($d->{status}, 200, 'dump status');
is($f->{method}, 'GET', 'field method');
is($f->{uri}, '/f/a%20b/./c?x=1&y=%41', 'field uri');
is($f->{path}, '/f/a b/c', 'field path');
is($f->{query}, 'x=1&y=%41', 'field query');
is($f->{protocol}, 'HTTP/1.1', 'field protocol');
is($f->{remote_addr}, '127.0.0.1', 'field remote_addr');
is($f->{remote_port}, $cport, 'field remote_port');
is($f->{server_addr}, '127.0.0.1', 'field server_addr');
is($f->{server_port}, $p, 'field server_port');
is($f->{server_name}, 'localhost', 'field server_name');
is($f->{scheme}, 'http', 'field scheme');

$d = dump_of(http($p, "POST /p HTTP/1.0\r\nX-Echo-Headers: 1\r\n"
                      . "Content-Length: 2\r\n\r\nab"));
is("$d->{fields}{method} $d->{fields}{protocol} $d->{fields}{query}",
   'POST HTTP/1.0 ', 'field method, http/1.0, no query');

$d = dump_of(http_get(port(1), '/', 'X-Echo-Headers' => 1));
is($d->{fields}{server_name}, 'other.example', 'field server_name other');

my $us = IO::Socket::UNIX->new(Peer => $t->testdir() . '/front.sock');
$d = dump_of(http(undef, "GET / HTTP/1.0\r\nX-Echo-Headers: 1\r\n\r\n",
                  socket => $us));
is($d->{fields}{server_addr}, 'unix:' . $t->testdir() . '/front.sock',
   'field server_addr, unix socket');
is($d->{fields}{server_port}, '0', 'field server_port, unix socket');
is($d->{fields}{remote_addr}, 'unix:', 'field remote_addr, unix socket');

SKIP: {
    skip 'no IPv6 on the loopback', 3 unless $v6listen;

    my $s6 = IO::Socket::IP->new(PeerHost => '::1', PeerPort => port(2),
                                 Proto => 'tcp');
    my $lport = $s6 ? $s6->sockport() : -1;
    $d = dump_of(http(undef,
                      "GET / HTTP/1.0\r\nX-Echo-Headers: 1\r\n\r\n",
                      socket => $s6));
    is($d->{fields}{server_addr}, '::1', 'field server_addr, ipv6');
    is($d->{fields}{server_port}, port(2), 'field server_port, ipv6');
    is("$d->{fields}{remote_addr} $d->{fields}{remote_port}", "::1 $lport",
       'field remote_addr and remote_port, ipv6');
}

# headers: the client's order, duplicates kept, names as sent

$d = dump_of(http_get($p, '/h', 'X-Echo-Headers' => 1, 'X-A' => 'first',
    'x-b' => 'second', 'X-A' => 'third', 'Cookie' => 'a=1', 'Cookie' => 'b=2',
    'X-Empty' => ''));
is(hdrs($d), 'Host: localhost|Connection: close|X-Echo-Headers: 1|'
   . 'X-A: first|x-b: second|X-A: third|Cookie: a=1|Cookie: b=2|X-Empty: ',
   'headers in order with duplicates');
is(header_value($d->{resp}, 'X-Echo-Header-Count'), 9, 'header count');

# shm_param

# the echo dumps every param, in the configuration's order

my @pn = ();

$d = dump_of(http_get($p, '/p?a=1&b=2', 'X-Echo-Headers' => 1, @pn));
is(join('|', @{$d->{params}}), 'METHOD=GET|LITERAL=a literal value|ARG_A=1|'
   . 'ARG_B=2|EMPTY_KEPT=', 'params');

$d = dump_of(http_post($p, '/p?b=', 'x', 'X-Echo-Headers' => 1, @pn));
is(join('|', @{$d->{params}}), 'METHOD=POST|LITERAL=a literal value|ARG_B=|'
   . 'EMPTY_KEPT=', 'params, if_not_empty omitted');

# shm_pass_request_headers off: the sidecar sees no headers, so the
# X-Echo-* controls are not seen either

my ($st, $h, $b) = parse_response(http_post($p, '/noheaders', 'body',
    'X-Echo-Status' => 404, 'X-Echo-Headers' => 1));
is($st, 200, 'no headers: control header not passed');
is(header_value($h, 'X-Echo-Header-Count'), 0, 'no headers: count 0');
is($b, 'body', 'no headers: body passed');

# shm_pass_request_body off

($st, $h, $b) = parse_response(http_post($p, '/nobody', 'secret body'));
is($st, 200, 'no body: status');
is($b, '', 'no body: empty');

$d = dump_of(http_post($p, '/nobody', 'secret', 'X-Echo-Headers' => 1));
is(scalar grep({ lc $_->[0] eq 'x-echo-headers' } @{$d->{headers}}), 1,
   'no body: headers passed');

# 100 headers and a header value of 8 KiB

my @many = map { (sprintf('X-H-%03d', $_), "value-$_") } 1 .. 100;
$d = dump_of(http_get($p, '/many', 'X-Echo-Headers' => 1, @many));
my @got = grep { $_->[0] =~ /^X-H-/ } @{$d->{headers}};
is(join('|', map { "$_->[0]=$_->[1]" } @got),
   join('|', map { sprintf 'X-H-%03d=value-%d', $_, $_ } 1 .. 100),
   '100 headers in order');
is(header_value($d->{resp}, 'X-Echo-Header-Count'), 103, '103 headers');

my $long = join '', map { chr(33 + $_ % 94) } 1 .. 8192;
$long =~ s/:/;/g;
$d = dump_of(http_get($p, '/long', 'X-Echo-Headers' => 1, 'X-Long' => $long,
                      'X-After' => 'after'));
my ($lh) = grep { $_->[0] eq 'X-Long' } @{$d->{headers}};
ok($lh && $lh->[1] eq $long, '8k header value intact');
is($d->{headers}[-1][1], 'after', 'header after the long one');
