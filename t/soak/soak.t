#!/usr/bin/perl

# Soak: at least SOAK_REQUESTS (1,000,000) requests of a mixed workload
# (t/soak/mix.lua: small GETs, 64 KiB responses, POSTs of 1, 8 and 40 KiB)
# through ONE channel: nginx with one worker, one echo sidecar with one
# loop thread.  One wrk run, capped at SOAK_MAX_S seconds (600); it is
# stopped with SIGINT once nginx's stub_status counts enough requests.
# The worker's and the sidecar's RSS and open descriptors are sampled
# from /proc every second.
#
# Pass criteria:
#   - wrk completed >= SOAK_REQUESTS requests within SOAK_MAX_S;
#   - every response was 200 with the expected body, byte for byte
#     (mix.lua checks each one), nginx logged no 4xx/5xx other than 499
#     (clients cut off by the stop), no socket errors, no timeouts;
#   - RSS growth after warm-up below SOAK_RSS_KB (1024 KiB) for the
#     worker and for the sidecar: the largest RSS sampled in the last
#     10% of the requests minus the largest one between 10% and 20%
#     (maxima of windows, not single samples: allocators, and ASan's
#     quarantine, make RSS wobble by a few hundred KiB; a leak grows);
#   - open descriptors: the sidecar's constant in every sample; the
#     worker's within [idle, idle + connections + 8] during the run;
#     both back to their idle counts after the run;
#   - one channel all along: no channel closed, no [error] in the log.
#
# Writes a summary table (and the samples at every 10%) to SOAK_OUT
# (bench/results/soak.md, or soak-asan.md under NGXSHM_ASAN=1).
#
# Run: make soak (or make soak-asan); not part of make test.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use POSIX qw(WNOHANG strftime);
use Time::HiRes qw(time sleep);
use ShmTest;

my $TARGET = $ENV{SOAK_REQUESTS} || 1_000_000;
my $MAX_S = $ENV{SOAK_MAX_S} || 600;
my $RSS_KB = $ENV{SOAK_RSS_KB} || 1024;
my $CONNS = $ENV{SOAK_CONNECTIONS} || 32;
my $WRK = $ENV{SOAK_WRK} || 'wrk';
my $TOP = "$FindBin::Bin/../..";
my $OUT = $ENV{SOAK_OUT}
    || "$TOP/bench/results/" . (ShmTest->asan() ? 'soak-asan.md' : 'soak.md');

plan(skip_all => 'no wrk') if system("$WRK -v >/dev/null 2>&1") == -1;

my $t = ShmTest->new()->write_config(<<'EOF');
worker_processes 1;

events {
    worker_connections 1024;
}

http {
    map $status $soak_bad {
        ~^2     0;
        499     0;
        default 1;
    }

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        access_log %%TESTDIR%%/bad.log combined if=$soak_bad;

        location /soak/ {
            shm_pass unix:%%TESTDIR%%/echo.sock;
        }

        location = /soak-status {
            stub_status;
            access_log off;
        }
    }
}
EOF

$t->plan(14);

my $sc = $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
$t->run();

my $p = port(0);
my ($worker) = $t->worker_pids();
my $sidecar = $sc->{pid};

# one request opens the channel; then the idle baseline

my ($st) = parse_response(http_get($p, '/soak/prime', 'X-Echo-Size' => 128));
is($st, 200, 'priming request');

sleep(0.5);
my $idle = sample(0);

# the run

my $wrk_out = $t->testdir() . '/wrk.out';
my $load0 = (split ' ', slurp('/proc/loadavg') // '?')[0];
my $t0 = time();
my $wrk = fork();
die "fork: $!\n" unless defined $wrk;

if ($wrk == 0) {
    open STDOUT, '>', $wrk_out or POSIX::_exit(127);
    open STDERR, '>&', \*STDOUT or POSIX::_exit(127);
    exec($WRK, '-t1', "-c$CONNS", "-d${MAX_S}s", '--timeout', '10s',
         '-s', "$FindBin::Bin/mix.lua", "http://127.0.0.1:$p/")
        or POSIX::_exit(127);
}

my @samples;
my ($stopped, $exited, $base) = (0, 0, undef);

while (time() - $t0 < $MAX_S + 30) {
    if (waitpid($wrk, WNOHANG) == $wrk) {
        $exited = 1;
        last;
    }

    my $n = nginx_requests();

    if (defined $n) {
        $base //= $n;
        # stub_status counts its own requests too: one per sample
        my $done = $n - $base - @samples;
        push @samples, sample($done) if !$stopped;

        if (!$stopped && $done >= $TARGET * 1.001 + 2 * $CONNS) {
            kill 'INT', $wrk;
            $stopped = 1;
        }
    }

    sleep(1);
}

if (!$exited) {
    kill 'KILL', $wrk;
    waitpid($wrk, 0);
}

my $elapsed = time() - $t0;
my $load1 = (split ' ', slurp('/proc/loadavg') // '?')[0];

# connections close, the worker goes idle
sleep(2);
my $after = sample(undef);

my $out = $t->read_file($wrk_out);
my %w = $out =~ /^SOAK (.*)$/m ? ($1 =~ /(\w+)=(\S+)/g) : ();

ok($exited && $stopped, 'wrk stopped by us after enough requests')
    or diag($out);
cmp_ok($w{requests} // 0, '>=', $TARGET, "at least $TARGET requests");
is($w{ok} // -1, $w{requests} // -2,
   'every response 200 with the expected body')
    or diag("bad status $w{bad_status}, bad body $w{bad_body}, "
            . "first: $w{first_bad}");
is(join(' ', map { $w{$_} // '?' } qw(connect read write timeout status)),
   '0 0 0 0 0', 'no socket errors, timeouts or error statuses');

my $bad = $t->read_file('bad.log');
is(scalar(() = $bad =~ /\n/g), 0, 'nginx logged no 4xx/5xx but 499')
    or diag(substr($bad, 0, 2000));

# warm: the largest RSS from 10% to 20% of the requests; end: the
# largest in the last 10%

my @ws = grep { $_->{done} >= $TARGET / 10 && $_->{done} < $TARGET / 5 }
              @samples;
my @es = grep { $_->{done} >= $TARGET * 0.9 } @samples;

@ws = ($samples[-1]) unless @ws;
@es = ($samples[-1]) unless @es;

my $warm = window(@ws);
my $end = window(@es);

my $wgrow = $end->{wrss} - $warm->{wrss};
my $sgrow = $end->{srss} - $warm->{srss};

cmp_ok($wgrow, '<', $RSS_KB, "worker RSS growth after warm-up < $RSS_KB KiB");
cmp_ok($sgrow, '<', $RSS_KB, "sidecar RSS growth after warm-up < $RSS_KB KiB");

my @sfd = grep { $_->{sfd} != $idle->{sfd} } @samples;
is(scalar @sfd, 0, 'sidecar descriptors constant during the run');

my @wfd = grep { $_->{wfd} < $idle->{wfd}
                 || $_->{wfd} > $idle->{wfd} + $CONNS + 8 } @samples;
is(scalar @wfd, 0, 'worker descriptors within idle .. idle + connections + 8');

is("$after->{wfd} $after->{sfd}", "$idle->{wfd} $idle->{sfd}",
   'descriptors back to idle after the run');

my $log = $t->read_file('error.log');
my @errors = $log =~ /^.*\[(?:error|alert|crit|emerg)\].*$/mg;
is(scalar @errors, 0, 'no [error] in error.log')
    or diag(join "\n", grep { defined } @errors[0 .. 9]);
unlike($log, qr/channel closed/, 'one channel all along');
is(join(' ', $t->worker_pids()), $worker, 'the same worker all along');

report();

$t->kill_sidecar($sc, 'TERM');


sub slurp {
    my ($path) = @_;

    open my $fh, '<', $path or return undef;
    local $/;
    my $s = <$fh>;
    close $fh;

    return $s;
}


# the largest RSS and descriptor counts of a window of samples
sub window {
    my (@s) = @_;

    my %m;

    for my $k (qw(wrss srss wfd sfd)) {
        $m{$k} = (sort { $b <=> $a } map { $_->{$k} } @s)[0];
    }

    return \%m;
}


sub fds {
    my ($pid) = @_;

    opendir my $dh, "/proc/$pid/fd" or return -1;
    my $n = grep { /^\d+$/ } readdir $dh;
    closedir $dh;

    return $n;
}


sub sample {
    my ($done) = @_;

    return {
        t    => time(),
        done => $done,
        wrss => proc_rss_kb($worker) // -1,
        srss => proc_rss_kb($sidecar) // -1,
        wfd  => fds($worker),
        sfd  => fds($sidecar),
    };
}


# requests nginx has handled so far, from stub_status
sub nginx_requests {
    my ($s, $h, $b) = parse_response(http_get($p, '/soak-status',
                                              { timeout => 5 }));

    return undef unless defined $s && $s == 200;
    return $b =~ /^\s*\d+\s+\d+\s+(\d+)\s*$/m ? $1 : undef;
}


sub report {
    my $rate = $w{duration_us} ? $w{requests} / ($w{duration_us} / 1e6) : 0;
    my $mib = sub { sprintf '%.1f', $_[0] / 1024 };
    my $pass = Test::More->builder->is_passing ? 'PASS' : 'FAIL';
    my $git = `git -C $TOP rev-parse --short HEAD 2>/dev/null` || '?';
    chomp $git;

    my $r = "# Soak: one channel, mixed workload\n\n";

    $r .= sprintf "%s, %s, %d CPUs (load average %s at the start, %s at "
        . "the end: other jobs share the machine), nginx %s, %s, "
        . "source %s%s.\n\n",
        strftime('%Y-%m-%d %H:%M UTC', gmtime),
        ShmTest->asan() ? 'ASan+UBSan build' : 'plain build',
        scalar(() = (slurp('/proc/cpuinfo') // '') =~ /^processor/mg),
        $load0, $load1,
        (`nginx -v 2>&1` =~ m{nginx/(\S+)})[0] // '?',
        (`$WRK -v 2>&1` =~ /^(wrk \S+)/)[0] // 'wrk',
        $git,
        `git -C $TOP status --porcelain -uno -- . ':!bench/results'`
            ? ' (modified)' : '';

    $r .= "nginx: 1 worker; sidecar: ngxshm-echo, 1 loop thread; wrk -t1 "
        . "-c$CONNS with t/soak/mix.lua (per 20 requests: 10 GET 128 B, "
        . "4 GET 64 KiB, 3 POST 1 KiB, 2 POST 8 KiB, 1 POST 40 KiB; "
        . "bodies echoed; every response's status and body checked).  "
        . "Command: `make " . (ShmTest->asan() ? 'soak-asan' : 'soak')
        . "`.\n\n";

    $r .= "Result: **$pass** (criteria: all 200 with the expected bodies, "
        . "no socket errors; RSS growth after warm-up (largest RSS in the "
        . "last 10% of the requests minus largest from 10% to 20%) < "
        . "$RSS_KB KiB for each process; sidecar fds constant, worker fds "
        . "within idle + connections + 8, both back to idle after).\n\n";

    $r .= "| | value |\n|---|--:|\n";
    $r .= "| requests (wrk) | $w{requests} |\n";
    $r .= "| responses checked OK | $w{ok} |\n";
    $r .= "| errors (connect/read/write/timeout/status) | "
        . join('/', map { $w{$_} // '?' } qw(connect read write timeout
                                             status)) . " |\n";
    $r .= sprintf "| duration | %.1f s |\n", ($w{duration_us} // 0) / 1e6;
    $r .= sprintf "| req/s | %.0f |\n", $rate;
    $r .= sprintf "| MiB transferred (responses) | %.0f |\n",
        ($w{bytes} // 0) / 1048576;
    $r .= sprintf "| latency p50 / p99 / max | %.2f / %.2f / %.1f ms |\n",
        map { ($w{$_} // 0) / 1000 } qw(p50_us p99_us max_us);
    $r .= "\n";

    $r .= "| process | RSS idle | RSS warm (max 10-20%) | "
        . "RSS end (max 90-100%) | growth warm..end | fds idle | "
        . "fds warm (max) | fds end (max) | fds after |\n"
        . "|---|--:|--:|--:|--:|--:|--:|--:|--:|\n";

    for my $x (['nginx worker', 'wrss', 'wfd'], ['sidecar', 'srss', 'sfd']) {
        my ($name, $rk, $fk) = @$x;
        $r .= sprintf "| %s | %s MiB | %s MiB | %s MiB | %+d KiB | %d | %d "
            . "| %d | %d |\n", $name, $mib->($idle->{$rk}),
            $mib->($warm->{$rk}), $mib->($end->{$rk}),
            $end->{$rk} - $warm->{$rk}, $idle->{$fk}, $warm->{$fk},
            $end->{$fk}, $after->{$fk};
    }

    $r .= "\nSamples (the first at or after every 10% of the requests):\n\n"
        . "| requests | s | worker RSS KiB | worker fds | sidecar RSS KiB | "
        . "sidecar fds |\n|--:|--:|--:|--:|--:|--:|\n";

    my $next = 0;

    for my $s (@samples) {
        next unless $s->{done} >= $next || $s == $samples[-1];
        $r .= sprintf "| %d | %.0f | %d | %d | %d | %d |\n", $s->{done},
            $s->{t} - $t0, $s->{wrss}, $s->{wfd}, $s->{srss}, $s->{sfd};
        $next = (int($s->{done} / ($TARGET / 10)) + 1) * ($TARGET / 10);
    }

    $r .= "\nwrk: " . ($out =~ /^(\s*\d+ requests in .*)$/m ? $1 : '?')
        . "\n";

    if (open my $fh, '>', $OUT) {
        print $fh $r;
        close $fh;
    } else {
        diag("$OUT: $!");
    }

    diag("\n$r");
}
