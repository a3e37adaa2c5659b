#!/usr/bin/perl

# "nginx -s reload" five times during 30 s of wrk load on two workers:
# no request fails; the old workers finish their streams, close their
# channels and exit; the sidecar frees their channels, so that it holds
# (descriptors and segment mappings) its baseline plus one channel per
# live worker.
#
# wrk runs at once against a shm_pass location and a plain "return 200"
# location, through the same reloads.  wrk counts a "read" socket error
# when a keepalive connection is closed under a request it has just
# written: an old worker closes its idle keepalive connections as it
# shuts down, and that races with the client's next request on them,
# with "return 200" just as with shm_pass (HTTP/1.1 has no way around it:
# the client retries on a new connection).  So each of wrk's connections
# can lose at most one request per reload, which nginx never saw.  Both
# locations must behave alike: no non-2xx answers, no connect, write or
# timeout errors, read errors within connections x reloads, and nginx
# itself logs nothing but 200 for either (an access log of everything
# else stays empty: no 499, 502 or 504).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use ShmTest;
use ShmFault;

plan(skip_all => 'no wrk') unless grep { -x "$_/wrk" } split /:/, $ENV{PATH};

my $CONF = <<'EOF';
worker_processes 2;

events {
    worker_connections 1024;
}

http {
    map $status $not200 {
        200      0;
        default  1;
    }

    log_format stamp '$msec $status $request_uri';

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        access_log %%TESTDIR%%/not200.log stamp if=$not200;

        location /shm {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }

        location /plain {
            return 200 "ok\n";
        }
    }
}
EOF

my $t = ShmTest->new()->write_config($CONF);

$t->plan(19);

my $echo = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my $base = fds($echo->{pid});

is(scalar(segments($echo->{pid})), 0, 'no channel before the first request');

# two wrk processes through the same reloads

my $DURATION = 30;
my %wrk = map {
    $_ => wrk_start(url => "http://127.0.0.1:$p/$_", duration => $DURATION,
                    threads => 1, connections => 8,
                    file => $t->testdir() . "/wrk.$_");
} qw(shm plain);

my $t0 = time();
my (@olds, @oldseg, %hadseg, $reloads, @replace);

$t->mark_log();

for my $k (1 .. 5) {
    my $at = $t0 + 4 + ($k - 1) * 5;
    sleep($at - time()) if time() < $at;

    for my $w ($t->worker_pids()) {
        my @sg = segments($w);
        push @olds, $w;
        push @oldseg, @sg;
        $hadseg{$w} = @sg;
    }
    my $r0 = time();
    eval { $t->reload(); $reloads++; 1 } or diag("reload $k: $@");
    push @replace, time() - $r0;
}

my %res;

for my $loc (qw(shm plain)) {
    my $r = $res{$loc} = wrk_wait($wrk{$loc});
    note("wrk /$loc: $r->{requests} requests, non-2xx $r->{non2xx}, socket "
         . "errors connect $r->{connect} read $r->{read} write $r->{write} "
         . "timeout $r->{timeout}");
}

is($reloads, 5, 'five reloads under load');
note(sprintf('new workers up %.3f .. %.3f s after SIGHUP',
             (sort { $a <=> $b } @replace)[0, -1]));

# a reload closes each keepalive connection once, and a connection made
# again at that moment may land on an old worker just before it stops
# accepting and be closed once more: nginx itself (return 200) has been
# seen at 43 for 40 connections and reloads
my $bound = 2 * 8 * $reloads;

for my $loc ('shm', 'plain') {
    my $r = $res{$loc};
    my $label = $loc eq 'shm' ? 'shm_pass' : 'return 200';

    cmp_ok($r->{requests} // 0, '>', 1000, "$label: requests served");
    is($r->{non2xx}, 0, "$label: no non-2xx answers");
    is(join(' ', map { $r->{$_} // 'none' } qw(connect write timeout)),
       '0 0 0', "$label: no connect, write or timeout errors");
    cmp_ok($r->{read} // 999, '<=', $bound,
           "$label: read errors within two per connection and reload");
}

# when wrk stops it closes its connections, requests in flight with them
# (nginx logs 499): those of its last second are not counted

my @not200 = grep {
    my ($msec, $st, $uri) = split ' ';
    my ($loc) = $uri =~ m{^/(\w+)};
    !($st == 499 && $res{$loc} && $msec > ($res{$loc}{end} // 0) - 1.5);
} split /\n/, $t->read_file('not200.log');

is(join("\n", @not200), '', 'nginx answered nothing but 200');
unlike($t->read_log(), qr/\[error\]/, 'no [error] in the log');

# the old workers exit; the sidecar keeps only the live workers' channels

my %old = map { $_ => 1 } @olds;

ok(wait_until(sub { !grep { $old{$_} } $t->worker_pids(1) }, 20),
   'the old workers exited');

# an old worker may still open a channel for a request on a keepalive
# connection while it shuts down: it closes that one too
my %closed;
$closed{$_}++ for $t->read_log()
    =~ /\[info\] (\d+)#\d+: .*worker exits, channel closed$/mg;
my @open = grep { $hadseg{$_} } @olds;

is(join(' ', grep { ($closed{$_} // 0) != 1 } @open), '',
   'each old worker closed its channel, with no stream left, as it exited');
is(join(' ', grep { !$old{$_} } keys %closed), '',
   'only old workers closed channels');

my @live = $t->worker_pids();
my @wseg = sort { $a <=> $b } map { segments($_) } @live;
my @sseg = segments($echo->{pid});

ok(@wseg >= 1, 'the live workers have channels');
is("@sseg", "@wseg", 'the sidecar maps the live workers\' segments only');

my $now = fds($echo->{pid});

is($now->{total}, $base->{total} + 3 * @wseg,
   'sidecar descriptors: baseline + 3 per live channel');
note("sidecar descriptors: baseline $base->{total}, now $now->{total}, "
     . scalar(@wseg) . ' channels');

is(join(' ', memfd_holders(@oldseg)), '',
   'nothing holds an old worker\'s segment');
