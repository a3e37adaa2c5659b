#!/usr/bin/perl

# Many requests at once over 4 workers: every response carries its own
# request's body.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Errno qw(EAGAIN EINTR);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);
use ShmTest;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 4;

events {
    worker_connections 1024;
}

http {
    client_max_body_size 1m;

    server {
        listen 127.0.0.1:%%PORT_0%% backlog=1024;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }
}
EOF

my $N = 256;

$t->plan(8);
$t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

is(scalar $t->worker_pids(), 4, 'four workers');

for my $round (1, 2) {
    my $t0 = time();
    my @res = parallel($round);
    my $el = time() - $t0;

    my @bad_status = grep { ($res[$_]{status} // 0) != 200 } 0 .. $N - 1;
    my @bad_body = grep { ($res[$_]{body} // '') ne $res[$_]{sent} }
                   0 .. $N - 1;

    is(scalar @bad_status, 0, "round $round: $N responses 200")
        or diag('first: #' . $bad_status[0] . ' status '
                . ($res[$bad_status[0]]{status} // 'none'));
    is(scalar @bad_body, 0, "round $round: every body is its own")
        or diag('first mismatch: #' . $bad_body[0]);
    cmp_ok($el, '<', 30, "round $round: within 30 s");
}

my ($st, $h, $b) = parse_response(http_post(port(0), '/after', 'after'));
is("$st $b", '200 after', 'served after the rounds');


# open $N connections, send all requests, read all responses, all at
# once with non-blocking sockets; bounded by 60 s
sub parallel {
    my ($round) = @_;

    my (@c, %by_fd);
    my $sel_r = IO::Select->new();
    my $sel_w = IO::Select->new();

    for my $i (0 .. $N - 1) {
        my $len = 16 + ($i * 7919 + $round * 104729) % 65536;
        my $seed = "round $round request $i;";
        my $body = substr($seed x (int($len / length $seed) + 1), 0, $len);

        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => port(0), Timeout => 5)
            or do { diag("connect #$i: $!"); push @c, { sent => $body };
                    next; };
        $s->blocking(0);

        push @c, {
            sock => $s,
            sent => $body,
            out  => "POST /p/$round/$i HTTP/1.1\r\nHost: localhost\r\n"
                    . "Connection: close\r\nContent-Length: $len\r\n\r\n"
                    . $body,
            in   => '',
        };

        $by_fd{fileno $s} = $i;
        $sel_r->add($s);
        $sel_w->add($s);
    }

    my $end = time() + 60;

    while ($sel_r->count() && time() < $end) {
        my ($r, $w) = IO::Select->select($sel_r,
            $sel_w->count() ? $sel_w : undef, undef, 1);

        for my $s (@{$w || []}) {
            my $c = $c[$by_fd{fileno $s}];
            my $n = syswrite($s, $c->{out}, 65536);

            if (defined $n) {
                substr($c->{out}, 0, $n, '');
            } elsif ($! != EAGAIN && $! != EINTR) {
                $c->{out} = '';
            }

            $sel_w->remove($s) unless length $c->{out};
        }

        for my $s (@{$r || []}) {
            my $c = $c[$by_fd{fileno $s}];
            my $n = sysread($s, $c->{in}, 65536, length $c->{in});

            next if !defined $n && ($! == EAGAIN || $! == EINTR);

            if (!$n) {
                $sel_r->remove($s);
                $sel_w->remove($s);
                close $s;
            }
        }
    }

    diag($sel_r->count() . " connections still open after 60 s")
        if $sel_r->count();

    for my $c (@c) {
        my ($st, $h, $b) = parse_response($c->{in});
        $c->{status} = $st;
        $c->{body} = $b;
        close $c->{sock} if $c->{sock};
    }

    return @c;
}
