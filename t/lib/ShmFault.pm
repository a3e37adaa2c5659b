package ShmFault;

# Copyright (C) ngxshm authors
#
# Helpers for the fault-injection tests (t/fault_*.t, t/reload.t): what
# a process holds (descriptors, segment mappings, RSS), bounded waits,
# a client that reads a response piece by piece, and wrk.
#
#   fds($pid)            { total, socket, eventfd, pipe, memfd, other }
#                        and socket => { inode => 1 } in {sockets}
#   segments($pid)       inodes of the module's segments mapped by $pid
#                        (memfd "ngx_http_shm"), as a sorted list
#   memfd_holders(@ino)  "pid:fd" and "pid:maps" entries of every process
#                        that still holds one of these segment inodes
#   sysv_segments(@pids) System V segments created by one of these pids
#   wait_until($sub, $timeout)   poll $sub until true; its last value
#   stream_start(...)    send a request, read until the head and
#                        $min body bytes arrived; stream_finish() reads
#                        on until EOF
#   burst($port, $n, $conc, $prefix)   $n echoed POSTs, $conc at a time;
#                        the number answered 200 with their own body
#   clients(...)         many connections at once in one select loop,
#                        some reading at a set rate; see below
#   wrk(...)             run wrk, bounded; its figures as a hash
#   wrk_start(file => PATH, ...), wrk_wait($h)   the same in a child
#                        process, to do something meanwhile; the figures
#                        and end => the time wrk ended

use strict;
use warnings;

use Exporter qw(import);
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use IO::Select;
use POSIX ();
use Time::HiRes qw(sleep time);
use ShmTest;

our @EXPORT = qw(fds segments memfd_holders sysv_segments wait_until
    stream_start stream_finish wrk wrk_start wrk_wait echo_lines worker_rss
    burst clients);

my $MEMFD = qr{/memfd:ngx_http_shm(?: \(deleted\))?$};


sub fds {
    my ($pid) = @_;

    my %r = (total => 0, socket => 0, eventfd => 0, pipe => 0, memfd => 0,
             other => 0, sockets => {});

    opendir my $dh, "/proc/$pid/fd" or return undef;

    for my $fd (grep { /^\d+$/ } readdir $dh) {
        my $l = readlink("/proc/$pid/fd/$fd") // next;
        $r{total}++;

        if ($l =~ /^socket:\[(\d+)\]/) {
            $r{socket}++;
            $r{sockets}{$1} = 1;

        } elsif ($l =~ /eventfd/) {
            $r{eventfd}++;

        } elsif ($l =~ /^pipe:/) {
            $r{pipe}++;

        } elsif ($l =~ $MEMFD) {
            $r{memfd}++;

        } else {
            $r{other}++;
        }
    }

    closedir $dh;

    return \%r;
}


sub segments {
    my ($pid) = @_;

    open my $fh, '<', "/proc/$pid/maps" or return ();

    my %ino;

    # not $_: callers map over their pids
    while (my $l = <$fh>) {
        chomp $l;
        my @f = split ' ', $l, 6;
        next unless @f == 6 && $f[5] =~ $MEMFD;
        $ino{$f[4]} = 1;
    }

    close $fh;

    my @ino = sort { $a <=> $b } keys %ino;

    return wantarray ? @ino : scalar @ino;
}


# every process holding one of the segment inodes, by descriptor or map
sub memfd_holders {
    my (@ino) = @_;

    my %want = map { $_ => 1 } @ino;
    my @found;

    return () unless %want;

    opendir my $dh, '/proc' or return ();

    for my $pid (grep { /^\d+$/ } readdir $dh) {
        next if $pid == $$;

        for my $ino (segments($pid)) {
            push @found, "$pid:maps:$ino" if $want{$ino};
        }

        opendir my $fdh, "/proc/$pid/fd" or next;

        for my $fd (grep { /^\d+$/ } readdir $fdh) {
            my $l = readlink("/proc/$pid/fd/$fd") // next;
            next unless $l =~ $MEMFD;

            my @st = stat("/proc/$pid/fd/$fd") or next;
            push @found, "$pid:fd$fd:$st[1]" if $want{$st[1]};
        }

        closedir $fdh;
    }

    closedir $dh;

    return @found;
}


# shmids of System V segments whose creator is one of @pids
sub sysv_segments {
    my (@pids) = @_;

    my %p = map { $_ => 1 } @pids;
    my @ids;

    # /proc/sysvipc/shm: key shmid perms size cpid lpid ...
    open my $fh, '<', '/proc/sysvipc/shm' or return ();
    <$fh>;

    while (my $l = <$fh>) {
        my @f = split ' ', $l;
        push @ids, $f[1] if @f > 5 && $p{$f[4]};
    }

    close $fh;

    return @ids;
}


sub wait_until {
    my ($sub, $timeout) = @_;

    my $end = time() + ($timeout || 10);
    my $v;

    for ( ;; ) {
        $v = $sub->();
        return $v if $v || time() >= $end;
        sleep(0.05);
    }
}


sub worker_rss {
    my ($t) = @_;

    my ($w) = $t->worker_pids();

    return defined $w ? proc_rss_kb($w) : undef;
}


# lines "start|cancel METHOD URI" a sidecar run with -l printed
sub echo_lines {
    my ($t, $h, $what, $re) = @_;

    my $err = $t->read_file($h->{stderr});

    return grep { $_ =~ $re } $err =~ /^ngxshm-echo: \Q$what\E (.*)$/mg;
}


# send $request on a new connection and read until the response head
# and at least $min body bytes have arrived (or $timeout); returns
# { s => socket, raw => text read so far, head => head, body_at => offset }
sub stream_start {
    my ($port, $request, $min, $timeout) = @_;

    my $s = ShmTest::http($port, $request, start => 1) or return undef;
    my $st = { s => $s, raw => '', sel => IO::Select->new($s) };
    my $end = time() + ($timeout || 10);

    while (time() < $end) {
        my $at = index($st->{raw}, "\r\n\r\n");

        if ($at >= 0 && length($st->{raw}) - $at - 4 >= $min) {
            $st->{body_at} = $at + 4;
            last;
        }

        next unless $st->{sel}->can_read(0.2);

        my $n = sysread($s, $st->{raw}, 65536, length $st->{raw});

        if (!$n) {
            last if defined $n || ($! != EAGAIN && $! != EWOULDBLOCK
                                   && $! != EINTR);
        }
    }

    my $at = index($st->{raw}, "\r\n\r\n");
    $st->{body_at} = $at + 4 if $at >= 0;

    return $st;
}


# read on until the peer closes (eof => 1) or $timeout (eof => 0)
sub stream_finish {
    my ($st, $timeout) = @_;

    my $end = time() + ($timeout || 10);
    my $s = $st->{s};

    $st->{eof} = 0;

    while (time() < $end) {
        next unless $st->{sel}->can_read(0.2);

        my $n = sysread($s, $st->{raw}, 65536, length $st->{raw});

        if (defined $n && $n == 0) {
            $st->{eof} = 1;
            last;
        }

        if (!defined $n && $! != EAGAIN && $! != EWOULDBLOCK
            && $! != EINTR)
        {
            $st->{eof} = 1;
            $st->{error} = "$!";
            last;
        }
    }

    close $s;

    return $st;
}


# $n POSTs to the echo, $conc at a time, bodies of 0 to 2 MiB; returns
# the number answered 200 with their own body, and the failures
sub burst {
    my ($port, $n, $conc, $prefix) = @_;

    my ($ok, @bad) = (0);
    my $i = 0;

    while ($i < $n) {
        my @s;

        for (1 .. $conc) {
            last if $i >= $n;

            my $len = $i % 50 == 7 ? 2 * 1024 * 1024 : ($i % 7) * 37 * 1024;
            my $body = substr(sprintf('%06d', $i) x ($len / 6 + 1), 0, $len);
            my $r = "POST $prefix/$i HTTP/1.1\r\nHost: localhost\r\n"
                . "Connection: close\r\nContent-Length: $len\r\n\r\n$body";

            push @s, [$i, $body, ShmTest::http($port, $r, start => 1)];
            $i++;
        }

        for (@s) {
            my ($k, $body, $s) = @$_;
            my ($st, undef, $b) = parse_response(ShmTest::http_end($s));

            if (defined $st && $st == 200 && $b eq $body) {
                $ok++;

            } else {
                push @bad, "$k: " . ($st // 'none') . ' ' . length($b);
            }
        }
    }

    return ($ok, @bad);
}


# clients(clients => [ { req => RAW, rate => bytes/s (optional) }, ...],
#         every => [ $seconds, sub { return a new client or undef } ],
#         tick => sub { ... }, timeout => s)
# Runs all the clients at once until each has its response (to the end
# of the connection: send "Connection: close") or the timeout; "every"
# adds clients as it goes, "tick" runs every 0.1 s.  Each client gets
# raw => the response, t => seconds from its start to its end, done.
sub clients {
    my (%o) = @_;

    my @c = @{$o{clients}};
    my $end = time() + ($o{timeout} || 30);
    my $next = $o{every} ? time() + $o{every}[0] : undef;
    my $tick = time();
    my $last = time();

    my $open = sub {
        my ($c) = @_;

        $c->{s} = ShmTest::http($c->{port}, '', start => 1);
        $c->{out} = $c->{req};
        $c->{raw} = '';
        $c->{t0} = time();
        $c->{tokens} = 0;
    };

    $open->($_) for @c;

    while (time() < $end) {
        my $now = time();
        my $dt = $now - $last;
        $last = $now;

        if ($next && $now >= $next) {
            my $n = $o{every}[1]->();

            if ($n) {
                $open->($n);
                push @c, $n;
            }

            $next = $now + $o{every}[0];
        }

        if ($o{tick} && $now >= $tick) {
            $o{tick}->();
            $tick = $now + 0.1;
        }

        my @live = grep { !$_->{done} } @c;
        last if !@live && !$next;

        my $r = IO::Select->new();
        my $w = IO::Select->new();

        for my $c (@live) {
            $c->{tokens} += $c->{rate} * $dt if $c->{rate};
            $w->add($c->{s}) if length $c->{out};
            $r->add($c->{s}) if !$c->{rate} || $c->{tokens} >= 4096;
        }

        my ($rr, $ww) = IO::Select->select($r, $w, undef, 0.01);

        for my $c (@live) {
            my $s = $c->{s};

            if ($ww && grep { $_ == $s } @$ww) {
                my $n = syswrite($s, $c->{out}, 65536);
                substr($c->{out}, 0, $n, '') if $n;
            }

            next unless $rr && grep { $_ == $s } @$rr;

            my $max = $c->{rate} ? int($c->{tokens}) : 262144;
            $max = 65536 if $max > 65536;

            my $n = sysread($s, $c->{raw}, $max, length $c->{raw});

            if (defined $n && $n > 0) {
                $c->{tokens} -= $n if $c->{rate};

            } elsif (defined $n
                     || ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR))
            {
                $c->{done} = 1;
                $c->{t} = time() - $c->{t0};
                close $s;
            }
        }

        $next = undef if $next && $o{until} && time() >= $o{until};
    }

    return \@c;
}


# wrk(url => ..., duration => s, threads => n, connections => n,
#     headers => [...], timeout => s): runs wrk, bounded by duration + 30 s;
# returns { requests, non2xx, connect, read, write, timeout, rps, out }
sub wrk {
    my (%o) = @_;

    my @cmd = ('wrk', '-t', $o{threads} || 2, '-c', $o{connections} || 8,
               '-d', ($o{duration} || 5) . 's',
               '--timeout', ($o{timeout} || 10) . 's');

    push @cmd, map { ('-H', $_) } @{$o{headers} || []};
    push @cmd, $o{url};

    my $pid = open(my $fh, '-|');
    die "wrk: fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        exec { $cmd[0] } @cmd or print "exec wrk: $!\n";
        POSIX::_exit(127);
    }

    my $out = '';
    my $sel = IO::Select->new($fh);
    my $end = time() + ($o{duration} || 5) + 30;

    while (time() < $end) {
        next unless $sel->can_read(0.5);
        my $n = sysread($fh, $out, 65536, length $out);
        last unless $n;
    }

    if (time() >= $end) {
        kill 'KILL', $pid;
    }

    close $fh;

    my %r = (out => $out, requests => undef, non2xx => 0, connect => 0,
             read => 0, write => 0, timeout => 0, status => $?);

    $r{requests} = $1 if $out =~ /(\d+) requests in/;
    $r{non2xx} = $1 if $out =~ /Non-2xx or 3xx responses: (\d+)/;
    $r{rps} = $1 if $out =~ /Requests\/sec:\s+([\d.]+)/;

    if ($out =~ /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/) {
        @r{qw(connect read write timeout)} = ($1, $2, $3, $4);
    }

    return \%r;
}



sub wrk_start {
    my (%o) = @_;

    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        my $r = wrk(%o);
        $r->{end} = time();

        if (open my $fh, '>', $o{file}) {
            print $fh map { "$_=" . ($r->{$_} // '') . "\n" }
                          qw(requests non2xx connect read write timeout end);
            print $fh "\n", $r->{out};
            close $fh;
        }

        POSIX::_exit(0);
    }

    return { pid => $pid, file => $o{file} };
}


sub wrk_wait {
    my ($h) = @_;

    waitpid($h->{pid}, 0);

    open my $fh, '<', $h->{file} or return {};
    local $/;
    my $text = <$fh>;
    close $fh;

    my ($vars, $out) = split /\n\n/, $text, 2;
    my %r = $vars =~ /^(\w+)=([\d.]*)$/mg;
    $r{out} = $out;

    return \%r;
}


1;
