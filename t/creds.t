#!/usr/bin/perl

# Two users: nginx's workers run as the system user ngxshm-t2 (created if
# missing), sidecars as root or as nobody.  libngxshm's socket mode keeps
# other users from connecting at all (EACCES); its SO_PEERCRED check
# refuses a peer that can connect but is not allowed (by default only
# root and the sidecar's own euid), with a HELLO_ACK of status EACCES
# that nginx logs, and the sidecar logs who it refused; allow_uid and
# allow_gid let the workers in; and a process of another user cannot
# attach "as nginx" by sending a valid HELLO itself.  Needs root.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::UNIX;
use POSIX ();
use Socket qw(SOCK_STREAM);
use ShmTest;

my $USER = 'ngxshm-t2';
my $SETPRIV = '/usr/bin/setpriv';

plan(skip_all => 'needs root') if $> != 0;
plan(skip_all => "no $SETPRIV") unless -x $SETPRIV;

my @pw = getpwnam($USER);

if (!@pw) {
    # a concurrent run may create it at the same time: look again after
    system('useradd', '-r', '-M', '-d', '/nonexistent',
           '-s', '/usr/sbin/nologin', $USER);
    @pw = getpwnam($USER);
}

plan(skip_all => "cannot create user $USER") unless @pw;

my ($uid, $gid) = @pw[2, 3];
my $group = getgrgid($gid);
my @nobody = getpwnam('nobody');

plan(skip_all => 'no user nobody') unless @nobody && defined $group;

my ($nuid, $ngid) = @nobody[2, 3];

my $t = ShmTest->new();

# the workers and the sidecar run as other users: they must reach the
# test directory, create sockets and sanitizer reports in it
chmod 01777, $t->testdir();

$t->write_config(<<"EOF");
user $USER $group;
worker_processes 1;

events {}

http {
    shm_connect_timeout 5s;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name localhost;

        location /a { shm_pass unix:%%TESTDIR%%/a.sock; }
        location /b { shm_pass unix:%%TESTDIR%%/b.sock; }
        location /c { shm_pass unix:%%TESTDIR%%/c.sock; }
        location /d { shm_pass unix:%%TESTDIR%%/d.sock; }
        location /e { shm_pass unix:%%TESTDIR%%/e.sock; }
        location /g { shm_pass unix:%%TESTDIR%%/g.sock; }
    }
}
EOF

$t->plan(51);

my $d = $t->testdir();
my $echo = $t->build() . '/examples/ngxshm-echo';
my $hello = $t->build() . '/t/tools/hello-client';

# root sidecars: a with the defaults (0600, own euid), b with 0666 and the
# default policy, c allowing the workers' uid, g their gid
my $a = $t->run_sidecar('ngxshm-echo', "$d/a.sock");
my $b = $t->run_sidecar('ngxshm-echo', '-m', '0666', "$d/b.sock");
my $c = $t->run_sidecar('ngxshm-echo', '-m', '0666', '-u', $uid, "$d/c.sock");
my $g = $t->run_sidecar('ngxshm-echo', '-m', '0666', '-g', $gid, "$d/g.sock");

# sidecars of user nobody: d with the default policy, e allowing the workers
my @as_nobody = ($SETPRIV, "--reuid=$nuid", "--regid=$ngid", '--clear-groups');
my $dn = $t->run_sidecar($SETPRIV, @as_nobody[1 .. 3], $echo, '-m', '0666',
                         "$d/d.sock", { socket => "$d/d.sock" });
my $en = $t->run_sidecar($SETPRIV, @as_nobody[1 .. 3], $echo, '-m', '0666',
                         '-u', $uid, "$d/e.sock", { socket => "$d/e.sock" });

$t->run();

my $p = port(0);
my ($worker) = $t->worker_pids();
my ($st, $h, $body, $log);

is(proc_uid($worker), $uid, "nginx worker runs as $USER");
is(proc_uid($dn->{pid}), $nuid, 'sidecar d runs as nobody');

# (2) socket permissions: the default mode is 0600, owner root

my @sa = stat("$d/a.sock");
is(sprintf('%o', $sa[2] & 07777), '600', 'default socket mode 0600');
is($sa[4], 0, 'socket owned by the sidecar (root)');
is(sprintf('%o', (stat "$d/b.sock")[2] & 07777), '666', 'socket mode -m 0666');
is((stat "$d/d.sock")[4], $nuid, 'socket of sidecar d owned by nobody');

is(connect_as($uid, $gid, "$d/a.sock"), 'Permission denied',
   "$USER cannot connect to a 0600 socket of root");
is(connect_as($nuid, $ngid, "$d/a.sock"), 'Permission denied',
   'nobody cannot connect to a 0600 socket of root');
is(connect_as($uid, $gid, "$d/b.sock"), 'connected',
   "$USER can connect to a 0666 socket");

$t->mark_log();
($st) = parse_response(http_get($p, '/a'));
is($st, 502, '0600 socket: 502');
my $sock_a = "unix:$d/a.sock";
ok($t->wait_log(qr/\[error\].*connect\(\) to sidecar \Q$sock_a\E failed /
                . qr/\(13: Permission denied\)/),
   '0600 socket: error log names EACCES');
unlike($t->read_file($a->{stderr}), qr/refused/,
       '0600 socket: the sidecar never saw the worker');

# (1) the default policy refuses a worker of another uid

for my $case (['b', 'root', $b], ['d', 'nobody', $dn]) {
    my ($n, $who, $sc) = @$case;

    $t->mark_log();
    ($st, $h, $body) = parse_response(http_post($p, "/$n", 'x'));
    is($st, 502, "sidecar of $who, default policy: 502");

    $log = $t->wait_log(qr/^(.*\[error\].*sidecar\ unix:\Q$d\E\/$n\.sock
                            \ refused\ the\ channel.*)$/mx);
    like($log // '', qr/\(13: Permission denied\)/,
         "sidecar of $who, default policy: error log names the refusal");

    my $re = qr/refused peer pid \Q$worker\E uid $uid gid $gid: not allowed/;
    ok(wait_file($sc->{stderr}, $re),
       "sidecar of $who, default policy: sidecar logs the refused peer");

    ($st) = parse_response(http_get($p, "/$n/again"));
    is($st, 502, "sidecar of $who, default policy: still 502");
}

# (3) allow_uid (-u) and allow_gid (-g) let the workers in

for my $case (['c', 'root, -u', 1], ['e', 'nobody, -u', 1],
              ['g', 'root, -g', 1])
{
    my ($n, $what) = @$case;

    ($st, $h, $body) = parse_response(http_post($p, "/$n/post", "body $n"));
    is($st, 200, "sidecar of $what: 200");
    is($body, "body $n", "sidecar of $what: body echoed");
    is(header_value($h, 'X-Echo-URI'), "/$n/post", "sidecar of $what: uri");
}

unlike($t->read_file($c->{stderr}) . $t->read_file($en->{stderr})
       . $t->read_file($g->{stderr}), qr/refused/,
       'allowed workers: no refusal logged');

# nginx checks nothing about the sidecar: one of user nobody is served
# like one of root (see docs/operations.md, Permissions)

($st, $h, $body) = parse_response(http_get($p, '/e/x', 'X-Echo-Size' => 70000));
is($st, 200, 'sidecar of nobody: 70000 bytes');
is(length $body, 70000, 'sidecar of nobody: whole body');

# (4) another user cannot attach "as nginx": a valid HELLO is refused

my ($rc, $out);

($rc, $out) = hello_as(0, 0, "$d/c.sock");
is("$rc $out", '0 ack status 0', 'HELLO as root: accepted');

($rc, $out) = hello_as($uid, $gid, "$d/c.sock");
is("$rc $out", "0 ack status 0", "HELLO as $USER (allow_uid): accepted");

$t->mark_log();

($rc, $out) = hello_as($nuid, $ngid, "$d/c.sock");
is("$rc $out", '1 ack status 13', 'HELLO as nobody (not allowed): EACCES');
ok(wait_file($c->{stderr}, qr/refused peer pid \d+ uid $nuid gid $ngid/),
   'HELLO as nobody: sidecar logs the refused peer');

($rc, $out) = hello_as($uid, $gid, "$d/b.sock");
is("$rc $out", '1 ack status 13', "HELLO as $USER, default policy: EACCES");

($rc, $out) = hello_as($nuid, $ngid, "$d/e.sock");
is("$rc $out", '1 ack status 13',
   'HELLO as nobody to its own sidecar with -u: EACCES (allow_uid replaces '
   . 'the own euid)');

($rc, $out) = hello_as($nuid, $ngid, "$d/d.sock");
is("$rc $out", '0 ack status 0', 'HELLO as nobody to its own sidecar: '
   . 'accepted');

($rc, $out) = hello_as($nuid, $ngid, "$d/a.sock");
is("$rc $out", '3 connect: Permission denied',
   'HELLO as nobody to a 0600 socket: cannot connect');

# the refusals left the sidecars working for allowed peers

($st, $h, $body) = parse_response(http_post($p, '/c/after', 'after'));
is("$st $body", '200 after', 'sidecar c still serves the workers');

($st) = parse_response(http_get($p, '/b/after'));
is($st, 502, 'sidecar b still refuses the workers');

$t->mark_log();
($st) = parse_response(http_get($p, '/g/after'));
is($st, 200, 'sidecar g still serves the workers');
unlike($t->read_log(), qr/\[(?:error|alert|crit)\]/,
       'no error logged for an allowed request');

for my $sc ($a, $b, $c, $g, $dn, $en) {
    is($t->kill_sidecar($sc, 'TERM'), 0, "$sc->{name} stops cleanly");
}

$t->stop();

ok(!-e "$d/a.sock" && !-e "$d/d.sock", 'sockets removed on stop');


# uid of a process, from /proc
sub proc_uid {
    my ($pid) = @_;

    open my $fh, '<', "/proc/$pid/status" or return undef;
    local $/;
    my $s = <$fh>;
    close $fh;

    return $s =~ /^Uid:\s+(\d+)/m ? $1 : undef;
}


# connect to a UNIX socket from a child running as uid:gid; "connected"
# or the error text
sub connect_as {
    my ($u, $gr, $path) = @_;

    pipe(my $r, my $w) or die "pipe: $!\n";

    my $pid = fork();
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        close $r;
        $) = "$gr $gr";
        POSIX::setgid($gr);
        POSIX::setuid($u);

        my $res = ($< == $u && $> == $u)
            ? (IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path)
               ? 'connected' : "$!")
            : 'setuid failed';

        syswrite($w, $res);
        POSIX::_exit(0);
    }

    close $w;
    my $res = '';
    # bounded: the child connects or fails at once, UNIX sockets never wait
    1 while sysread($r, $res, 256, length $res);
    close $r;
    waitpid($pid, 0);

    return $res;
}


# run hello-client as uid:gid; (exit code, its line)
sub hello_as {
    my ($u, $gr, $path) = @_;

    my $out = `$SETPRIV --reuid=$u --regid=$gr --clear-groups $hello $path`;
    my $rc = $? >> 8;
    chomp $out;
    $out =~ s/ pid \d+$//;

    return ($rc, $out);
}


# wait until a file matches (sidecar stderr); bounded
sub wait_file {
    my ($file, $re) = @_;

    for (1 .. 200) {
        return 1 if $t->read_file($file) =~ $re;
        select(undef, undef, undef, 0.05);
    }

    return 0;
}
