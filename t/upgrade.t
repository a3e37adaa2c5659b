#!/usr/bin/perl

# Binary upgrade under wrk load (USR2: a second master from the same
# binary, WINCH: the old workers finish, QUIT: the old master goes): no
# request fails, the old workers' channels are closed and the sidecar
# frees them; the new master's workers serve through their own channels.
# wrk runs against shm_pass and "return 200" at once; see t/reload.t for
# why a read error per keepalive connection is allowed to both alike.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use ShmTest;
use ShmFault;

plan(skip_all => 'no wrk') unless grep { -x "$_/wrk" } split /:/, $ENV{PATH};

my $t = ShmTest->new()->daemon()->write_config(<<'EOF2');
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
EOF2

$t->plan(19);

my $echo = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my $base = fds($echo->{pid});
my $old = $t->nginx_pid();

my $DURATION = 20;
my %wrk = map {
    $_ => wrk_start(url => "http://127.0.0.1:$p/$_", duration => $DURATION,
                    threads => 1, connections => 8,
                    file => $t->testdir() . "/wrk.$_");
} qw(shm plain);

sleep(4);

my @oldw = $t->worker_pids();
my @oldseg = map { segments($_) } @oldw;
my %old = map { $_ => 1 } @oldw;
my %hadseg = map { $_ => scalar(segments($_)) } @oldw;

ok(@oldseg >= 1, 'the old workers have channels');

$t->mark_log();

my $t0 = time();
my $new = eval { $t->upgrade(pause => 3) };
my $el = time() - $t0;

ok($new, 'upgraded') or diag($@);
note(sprintf('upgrade (USR2, 3 s, WINCH, old workers gone, 3 s, QUIT) '
             . 'took %.3f s', $el));
isnt($new // $old, $old, 'a new master');

my %res;

for my $loc (qw(shm plain)) {
    my $r = $res{$loc} = wrk_wait($wrk{$loc});
    note("wrk /$loc: $r->{requests} requests, non-2xx $r->{non2xx}, socket "
         . "errors connect $r->{connect} read $r->{read} write $r->{write} "
         . "timeout $r->{timeout}");
}

for my $loc ('shm', 'plain') {
    my $r = $res{$loc};
    my $label = $loc eq 'shm' ? 'shm_pass' : 'return 200';

    cmp_ok($r->{requests} // 0, '>', 1000, "$label: requests served");
    is($r->{non2xx}, 0, "$label: no non-2xx answers");
    is(join(' ', map { $r->{$_} // 'none' } qw(connect write timeout)),
       '0 0 0', "$label: no connect, write or timeout errors");
    cmp_ok($r->{read} // 999, '<=', 8,
           "$label: read errors within one per keepalive connection");
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

# an old worker may still open a channel for a request on a keepalive
# connection while it shuts down: it closes that one too
my %closed;
$closed{$_}++ for $t->read_log()
    =~ /\[info\] (\d+)#\d+: .*worker exits, channel closed$/mg;
my @open = grep { $hadseg{$_} } @oldw;

is(join(' ', grep { ($closed{$_} // 0) != 1 } @open), '',
   'each old worker closed its channel, with no stream left, as it exited');
is(join(' ', grep { !$old{$_} } keys %closed), '',
   'only old workers closed channels');

my @live = $t->worker_pids();
my @wseg = sort { $a <=> $b } map { segments($_) } @live;
my @sseg = segments($echo->{pid});

ok(@wseg >= 1, 'the new workers have channels');
is("@sseg", "@wseg", 'the sidecar maps the new workers\' segments only');
is(fds($echo->{pid})->{total}, $base->{total} + 3 * @wseg,
   'sidecar descriptors: baseline + 3 per live channel');
is(join(' ', memfd_holders(@oldseg)), '',
   'nothing holds an old worker\'s segment');
