#!/usr/bin/perl

# Nothing polls: after a few requests, with the channels open, an idle
# sidecar and an idle nginx use less than 1% of a CPU and wake up rarely.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep);
use ShmTest;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 2;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location / {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }
    }
}
EOF

$t->plan(6);
my $echo = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my $ok = 0;

for my $i (1 .. 20) {
    my ($st, $h, $b) = parse_response(http_post($p, "/r/$i", "r$i"));
    $ok++ if $st && $st == 200 && $b eq "r$i";
}

is($ok, 20, 'requests served before idling');

sleep(1);

my @nginx = ($t->nginx_pid(), $t->worker_pids());
my $c0 = ticks($echo->{pid});
my $n0 = ticks(@nginx);
my $w0 = wakeups($echo->{pid});
my $m0 = wakeups(@nginx);

sleep(10);

my $c1 = ticks($echo->{pid});
my $n1 = ticks(@nginx);
my $w1 = wakeups($echo->{pid});
my $m1 = wakeups(@nginx);

# 1% of 10 s is 0.1 s: 10 ticks at the usual 100 Hz
my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;

cmp_ok($c1 - $c0, '<', $hz / 10, 'idle sidecar: < 1% cpu');
cmp_ok($n1 - $n0, '<', $hz / 10, 'idle nginx: < 1% cpu');
cmp_ok($w1 - $w0, '<', 100, 'idle sidecar: < 10 wakeups/s');
cmp_ok($m1 - $m0, '<', 100, 'idle nginx: < 10 wakeups/s');

my ($st, $h, $b) = parse_response(http_post($p, '/after', 'after'));
is("$st $b", '200 after', 'served after idling');


sub ticks {
    my $sum = 0;

    $sum += proc_cpu_ticks($_) // 0 for @_;

    return $sum;
}


# voluntary context switches of all threads of the processes
sub wakeups {
    my $sum = 0;

    for my $pid (@_) {
        for my $f (glob "/proc/$pid/task/*/status") {
            open my $fh, '<', $f or next;
            local $/;
            my $s = <$fh>;
            $sum += $1 if $s =~ /^voluntary_ctxt_switches:\s+(\d+)/m;
        }
    }

    return $sum;
}
