package ShmTest;

# Copyright (C) ngxshm authors
#
# A small harness for the integration tests of ngx_http_shm_module, in the
# spirit of nginx-tests' Test::Nginx.  Core Perl modules only.
#
#   use lib 't/lib';
#   use ShmTest;
#
#   my $t = ShmTest->new()->write_config(<<'EOF');
#   events {}
#   http {
#       server {
#           listen 127.0.0.1:%%PORT_0%%;
#           location / { shm_pass unix:%%TESTDIR%%/echo.sock; }
#       }
#   }
#   EOF
#   $t->plan(2);                       # one more is added: "no alerts"
#   $t->run_sidecar('ngxshm-echo', '%%TESTDIR%%/echo.sock');
#   $t->run();
#   my ($status, $headers, $body) = parse_response(http_get(port(0), '/'));
#
# Environment:
#   NGXSHM_BUILD   directory with ngx_http_shm_module.so and examples/
#                  (default: build/ next to t/)
#   NGXSHM_ASAN=1  the module and the examples are built with ASan+UBSan:
#                  preload the sanitizer runtimes into nginx
#   NGXSHM_NGINX   the nginx binary (default /usr/sbin/nginx)
#   NGXSHM_KEEP=1  keep the test directory
#   NGXSHM_DEBUG=1 error_log at debug level (nginx is built --with-debug)
#
# The object:
#   new()                      temp dir; skip_all only if nginx or the .so
#                              is missing
#   write_config($text)        %%TESTDIR%%, %%PORT_n%%, %%BUILD%%; adds
#                              load_module, pid, error_log, user (root,
#                              when run as root, unless $text has "user"),
#                              and temp paths and access_log inside http {}
#   plan($n)                   $n + 1 tests: the last is "no alerts"
#   run(), stop(), reload([$text]), worker_pids(), nginx_pid()
#   daemon()                   "daemon on" (before write_config)
#   upgrade([pause => s])      binary upgrade: USR2, WINCH, QUIT
#   run_sidecar($prog, @args [, {socket => $path, env => {...},
#                                 may_exit => 1}])
#   kill_sidecar($h, 'KILL' | 'TERM' | 'STOP' | 'CONT')
#   wait_sidecar($h [, $timeout])  wait for it to exit; its wait status
#   mark_log(), read_log(), wait_log($re [, $timeout])
#   allow_log(qr/.../), asan_options('name=value:...')
#   testdir(), read_file($name), write_file($name, $text), done()
#
# Functions: port($n), http(), http_get(), http_head(), http_post(),
# http_end(), http_read_response(), parse_response(), header_value(),
# header_values(), proc_rss_kb(), proc_cpu_ticks().
#
# At the end (done() or the END block) nginx and the sidecars are stopped
# and a final test "no alerts" fails on [alert], [crit] or [emerg] in the
# logs, on any sanitizer report (asan.* and ubsan.* files, or "runtime
# error:" and "ERROR: AddressSanitizer" in the logs), on an nginx that
# did not quit gracefully, and on a sidecar that died by itself or did
# not exit with status 0 on SIGTERM.  A sidecar started with may_exit => 1
# may exit by itself, with status 0.

use strict;
use warnings;

use Exporter qw(import);
use Cwd qw(abs_path);
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use File::Basename qw(dirname);
use File::Path qw(rmtree);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use POSIX qw(WNOHANG);
use Socket qw(SOCK_STREAM);
use Test::More ();
use Time::HiRes qw(sleep time);

our @EXPORT = qw(port http http_get http_head http_post http_end
    http_read_response parse_response header_value header_values
    proc_rss_kb proc_cpu_ticks pattern);

our $TIMEOUT = 10;          # seconds; every wait is bounded by it

my $TOP = abs_path(dirname(__FILE__) . '/../..');
my $NGINX = $ENV{NGXSHM_NGINX} || '/usr/sbin/nginx';
my $BUILD = $ENV{NGXSHM_BUILD} || "$TOP/build";
my $ASAN = $ENV{NGXSHM_ASAN} ? 1 : 0;

$SIG{PIPE} = 'IGNORE';     # a write to a closed connection is an error

my %PORTS;                  # index -> port, for this test file
my %USED;                   # ports handed out
my @OBJECTS;                # for the END block


sub new {
    my ($class) = @_;

    my $self = bless {
        build    => $BUILD,
        sidecars => [],
        allowed  => [],
        problems => [],
        log_from => 0,
        mark     => 0,
        nseq     => 0,
    }, $class;

    if (!-x $NGINX) {
        Test::More::plan(skip_all => "no nginx at $NGINX");
    }

    if (!-f "$BUILD/ngx_http_shm_module.so") {
        Test::More::plan(skip_all => "no $BUILD/ngx_http_shm_module.so");
    }

    $self->{dir} = tempdir('ngxshm-test-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    chmod 0755, $self->{dir};
    $self->{pid} = $$;

    push @OBJECTS, $self;

    return $self;
}


sub testdir { $_[0]->{dir} }


# "daemon on" instead of "daemon off", before write_config(): as nginx
# runs in production; needed for a binary upgrade, see upgrade()
sub daemon {
    my ($self) = @_;

    $self->{daemon} = 1;
    return $self;
}
sub build { $_[0]->{build} }
sub asan { $ASAN }


sub plan {
    my ($self, $n) = @_;

    Test::More::plan(tests => $n + 1);
    return $self;
}


# lines of error.log matching one of these are not counted as alerts,
# for a test that provokes one on purpose
sub allow_log {
    my ($self, @re) = @_;

    push @{$self->{allowed}}, @re;
    return $self;
}


# extra ASAN_OPTIONS for nginx and the sidecars started after this call,
# e.g. "quarantine_size_mb=16"
sub asan_options {
    my ($self, $opts) = @_;

    $self->{asan_extra} = $opts;
    return $self;
}


# a free TCP port on 127.0.0.1, the same for the same index
sub port {
    my ($n) = @_;

    return $PORTS{$n} if defined $PORTS{$n};

    for (1 .. 100) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1',
            LocalPort => 0,
            Proto     => 'tcp',
            Listen    => 1,
        ) or die "port: cannot bind: $!\n";

        my $p = $s->sockport();
        close $s;

        next if $USED{$p}++;
        return $PORTS{$n} = $p;
    }

    die "port: no free port\n";
}


sub expand {
    my ($self, $text) = @_;

    $text =~ s/%%TESTDIR%%/$self->{dir}/g;
    $text =~ s/%%PORT_(\d+)%%/port($1)/ge;
    $text =~ s/%%BUILD%%/$self->{build}/g;

    return $text;
}


sub write_file {
    my ($self, $name, $content) = @_;

    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";

    open my $fh, '>', $path or die "write_file: $path: $!\n";
    binmode $fh;
    print $fh $content;
    close $fh or die "write_file: $path: $!\n";

    return $self;
}


sub read_file {
    my ($self, $name) = @_;

    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";

    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    my $content = <$fh>;
    close $fh;

    return defined $content ? $content : '';
}


sub write_config {
    my ($self, $text) = @_;

    my $d = $self->{dir};
    my $level = $ENV{NGXSHM_DEBUG} ? 'debug' : 'info';

    my $main = "load_module $self->{build}/ngx_http_shm_module.so;\n"
        . ($self->{daemon} ? "daemon on;\n" : "daemon off;\n")
        . "master_process on;\n"
        . "pid $d/nginx.pid;\n"
        . "error_log $d/error.log $level;\n";

    # nginx passes only the "env" variables to a new binary (upgrade())
    $main .= "env LD_PRELOAD;\nenv ASAN_OPTIONS;\nenv UBSAN_OPTIONS;\n"
        if $ASAN;

    # as root, nginx would drop its workers to "nobody", who cannot reach
    # sockets in the test directory nor talk to a sidecar running as root;
    # a configuration with its own "user" directive keeps it
    $main .= "user root;\n" if $> == 0 && $text !~ /^\s*user\s/m;

    my $http = "\n"
        . "    access_log $d/access.log;\n"
        . "    client_body_temp_path $d/client_body_temp;\n"
        . "    proxy_temp_path $d/proxy_temp;\n"
        . "    fastcgi_temp_path $d/fastcgi_temp;\n"
        . "    uwsgi_temp_path $d/uwsgi_temp;\n"
        . "    scgi_temp_path $d/scgi_temp;\n";

    # the module's own temp path, if this build of it has the directive
    $http .= "    shm_temp_path $d/shm_temp;\n"
        if $self->_module_has('shm_temp_path');

    $text = $self->expand($text);
    $text =~ s/^(\s*http\s*\{)/$1$http/m;

    $self->{listen} = [ $text =~ /^\s*listen\s+(?:127\.0\.0\.1:)?(\d+)/mg ];

    my ($wp) = $text =~ /^\s*worker_processes\s+(\w+)\s*;/m;
    $wp = 1 unless defined $wp;
    $wp = _ncpu() if $wp eq 'auto';
    $self->{nworkers} = $wp;
    $self->write_file('nginx.conf', "# written by t/lib/ShmTest.pm\n"
                                    . $main . "\n" . $text);

    return $self;
}


sub _module_has {
    my ($self, $directive) = @_;

    $self->{so} //= $self->read_file("$self->{build}/ngx_http_shm_module.so");

    return index($self->{so}, "$directive\0") >= 0;
}


sub _sanitizer_env {
    my ($self, $name, $leaks, $extra) = @_;

    my $d = $self->{dir};
    my $asan = "detect_leaks=$leaks:abort_on_error=0:log_path=$d/asan.$name";
    $asan .= ":$extra" if defined $extra && $extra ne '';

    return (
        ASAN_OPTIONS  => $asan,
        UBSAN_OPTIONS => "print_stacktrace=1:log_path=$d/ubsan.$name",
    );
}


sub _spawn {
    my ($self, $env, $out, $err, @cmd) = @_;

    my $pid = fork();
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        open STDIN, '<', '/dev/null' or POSIX::_exit(127);
        open STDOUT, '>>', $out or POSIX::_exit(127);
        open STDERR, '>>', $err or POSIX::_exit(127);
        @ENV{keys %$env} = values %$env;
        exec { $cmd[0] } @cmd or print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);
    }

    return $pid;
}


sub _gone {
    my ($pid, $timeout) = @_;

    my $end = time() + $timeout;

    while (time() < $end) {
        my $r = waitpid($pid, WNOHANG);
        return $? if $r == $pid;
        return -1 if $r == -1;
        sleep(0.02);
    }

    return undef;
}


sub _connect_tcp {
    my ($port) = @_;

    return IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => $port,
        Proto    => 'tcp',
        Timeout  => 1,
    );
}


sub run {
    my ($self) = @_;

    my $d = $self->{dir};
    die "run: nginx is already running\n" if $self->{nginx};
    die "run: no nginx.conf, call write_config()\n" unless -f "$d/nginx.conf";

    my %env = $self->_sanitizer_env('nginx', 0, $self->{asan_extra});

    if ($ASAN) {
        my $rt = join ' ', map {
            my $f = `gcc -print-file-name=$_`;
            chomp $f;
            $f;
        } qw(libasan.so libubsan.so);

        $env{LD_PRELOAD} = $rt;
    }

    $self->{log_from} = -s "$d/error.log" || 0 unless $self->{started}++;
    unlink "$d/nginx.pid";

    if ($self->{daemon}) {
        _subreaper() or die "run: prctl(PR_SET_CHILD_SUBREAPER) failed\n";
    }

    my $pid = $self->_spawn(\%env, "$d/nginx.stdout", "$d/nginx.stderr",
        $NGINX, '-p', "$d/", '-c', "$d/nginx.conf", '-e', "$d/error.log");

    if ($self->{daemon}) {
        # the master forks and the process started exits: the master is
        # adopted by this process, a subreaper
        my $st = _gone($pid, $TIMEOUT);

        die "run: nginx exited with status " . ($st // 'none') . ":\n"
            . $self->read_file('nginx.stderr')
            . _tail($self->read_file('error.log'), 20)
            unless defined $st && $st == 0;

        my $end = time() + $TIMEOUT;
        sleep(0.05) until -s "$d/nginx.pid" || time() > $end;

        (_slurp("$d/nginx.pid") // '') =~ /^(\d+)/
            or die "run: no pid in nginx.pid\n";
        $pid = $1;
    }

    $self->{nginx} = $pid;

    my $end = time() + $TIMEOUT;
    my @wait = @{$self->{listen} || []};

    while (time() < $end) {
        my $r = waitpid($pid, WNOHANG);

        if ($r == $pid) {
            delete $self->{nginx};
            die "run: nginx exited with status $?:\n"
                . $self->read_file('nginx.stderr')
                . _tail($self->read_file('error.log'), 20);
        }

        if (-s "$d/nginx.pid") {
            @wait = grep { !_connect_tcp($_) } @wait;
            my @w = $self->worker_pids();
            return $self if !@wait && @w >= $self->{nworkers};
        }

        sleep(0.05);
    }

    $self->stop();
    die "run: nginx did not start within $TIMEOUT s\n"
        . _tail($self->read_file('error.log'), 20);
}


sub _ncpu {
    my $n = () = (_slurp('/proc/cpuinfo') // '') =~ /^processor\s*:/mg;

    return $n || 1;
}


sub _tail {
    my ($text, $n) = @_;

    my @l = split /\n/, $text;
    @l = @l[-$n .. -1] if @l > $n;

    return join '', map { "  $_\n" } @l;
}


sub nginx_pid { $_[0]->{nginx} }


# pids of the live (not shutting down) worker processes
sub worker_pids {
    my ($self, $all) = @_;

    my $master = $self->{nginx} or return ();

    return _workers($master, $all);
}


sub _workers {
    my ($master, $all) = @_;

    my @pids;

    opendir my $dh, '/proc' or return ();

    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $stat = _slurp("/proc/$pid/stat") or next;
        $stat =~ /\)\s+\S+\s+(\d+)/ or next;
        next unless $1 == $master;

        my $cmd = _slurp("/proc/$pid/cmdline");
        next unless $cmd =~ /^nginx: worker process/;
        next if !$all && $cmd =~ /shutting down/;

        push @pids, $pid;
    }

    closedir $dh;

    @pids = sort { $a <=> $b } @pids;

    return @pids;
}


sub _slurp {
    my ($path) = @_;

    open my $fh, '<', $path or return undef;
    local $/;
    my $s = <$fh>;
    close $fh;

    return $s;
}


# reread the configuration (optionally a new one); waits until the old
# workers are replaced; returns the new worker pids
sub reload {
    my ($self, $config) = @_;

    $self->write_config($config) if defined $config;

    my $master = $self->{nginx} or die "reload: nginx is not running\n";
    my %old = map { $_ => 1 } $self->worker_pids();

    kill 'HUP', $master;

    my $end = time() + $TIMEOUT;

    while (time() < $end) {
        my @now = $self->worker_pids();

        if (@now >= $self->{nworkers} && !grep { $old{$_} } @now) {
            return @now;
        }

        sleep(0.05);
    }

    die "reload: workers not replaced within $TIMEOUT s\n";
}


# binary upgrade, as nginx documents it: USR2 starts a new master from
# the same binary (the pid file becomes nginx.pid.oldbin), WINCH makes
# the old workers finish, QUIT ends the old master.  nginx must run with
# daemon(): a master started in the foreground ignores USR2 while its
# first parent lives (it takes itself for a new binary) and WINCH (it
# is not daemonized).  The new master is the old one's child; this
# process, a subreaper, adopts it and drives it from then on.  pause =>
# seconds between the steps (default 0).  Returns the new master's pid.
sub upgrade {
    my ($self, %opt) = @_;

    my $d = $self->{dir};
    my $old = $self->{nginx} or die "upgrade: nginx is not running\n";

    die "upgrade: nginx must run with daemon()\n" unless $self->{daemon};

    kill 'USR2', $old;

    my ($new, $end) = (undef, time() + $TIMEOUT);

    while (time() < $end) {
        my $p = -e "$d/nginx.pid.oldbin" ? _slurp("$d/nginx.pid") : undef;

        if ($p && $p =~ /^(\d+)/ && $1 != $old) {
            $new = $1;
            last if _workers($new) >= $self->{nworkers};
        }

        sleep(0.05);
    }

    die "upgrade: no new master with workers within $TIMEOUT s\n"
        unless $new && _workers($new) >= $self->{nworkers};

    sleep($opt{pause}) if $opt{pause};

    kill 'WINCH', $old;

    $end = time() + $TIMEOUT;
    sleep(0.05) while _workers($old, 1) && time() < $end;
    die "upgrade: old workers still run $TIMEOUT s after WINCH\n"
        if _workers($old, 1);

    sleep($opt{pause}) if $opt{pause};

    kill 'QUIT', $old;

    if (!defined _gone($old, $TIMEOUT)) {
        die "upgrade: the old master did not quit within $TIMEOUT s\n";
    }

    $self->{nginx} = $new;

    return $new;
}


sub _subreaper {
    my $nr = eval { require 'sys/syscall.ph'; &SYS_prctl() };

    return 0 unless defined $nr;

    # PR_SET_CHILD_SUBREAPER
    return syscall($nr, 36, 1, 0, 0, 0) == 0;
}


sub stop {
    my ($self) = @_;

    my $pid = delete $self->{nginx} or return $self;

    kill 'QUIT', $pid;

    return $self if defined _gone($pid, $TIMEOUT);

    push @{$self->{problems}},
        "nginx did not quit within $TIMEOUT s of SIGQUIT: "
        . join(' ', map { "$_:" . (_slurp("/proc/$_/cmdline") // '') }
                        $self->_all_children($pid));

    kill 'TERM', $pid;
    return $self if defined _gone($pid, 5);

    kill 'KILL', $_ for $self->_all_children($pid);
    kill 'KILL', $pid;
    _gone($pid, 5);

    return $self;
}


sub _all_children {
    my ($self, $ppid) = @_;

    my @pids;

    opendir my $dh, '/proc' or return ();

    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $stat = _slurp("/proc/$pid/stat") or next;
        push @pids, $pid if $stat =~ /\)\s+\S+\s+(\d+)/ && $1 == $ppid;
    }

    closedir $dh;

    return @pids;
}


# start a sidecar: "ngxshm-echo" is $NGXSHM_BUILD/examples/ngxshm-echo,
# a name with a slash is a path.  Arguments may use %%TESTDIR%%.  Waits
# until its socket accepts connections: the socket is the first argument
# that starts with "/", or { socket => PATH } as the last argument
# (socket => undef: do not wait).  may_exit => 1: the sidecar may exit by
# itself (with status 0) before the end.  Returns a handle; $h->{pid}.
sub run_sidecar {
    my ($self, $prog, @args) = @_;

    my $opt = ref $args[-1] eq 'HASH' ? pop @args : {};

    @args = map { $self->expand($_) } @args;

    my $path = $prog =~ m{/} ? $prog : "$self->{build}/examples/$prog";
    die "run_sidecar: $path is not executable\n" unless -x $path;

    (my $base = $path) =~ s{.*/}{};
    my $n = $self->{nseq}++;
    my $out = "$self->{dir}/$base.$n.stdout";
    my $err = "$self->{dir}/$base.$n.stderr";

    my $sock = exists $opt->{socket} ? $opt->{socket}
                                     : (grep { m{^/} } @args)[0];
    $sock = $self->expand($sock) if defined $sock;

    my %env = $self->_sanitizer_env("$base.$n", 1, $self->{asan_extra});
    %env = (%env, %{$opt->{env}}) if $opt->{env};

    my $pid = $self->_spawn(\%env, $out, $err, $path, @args);
    my $h = { pid => $pid, name => "$base.$n", path => $path,
              socket => $sock, stdout => $out, stderr => $err,
              may_exit => $opt->{may_exit} ? 1 : 0 };

    push @{$self->{sidecars}}, $h;

    return $h unless defined $sock;

    my $end = time() + $TIMEOUT;

    while (time() < $end) {
        if (waitpid($pid, WNOHANG) == $pid) {
            $h->{status} = $?;
            die "run_sidecar: $base exited with status $?:\n"
                . _tail($self->read_file($err), 20);
        }

        if (-S $sock) {
            my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $sock);

            if ($s) {
                close $s;
                return $h;
            }
        }

        sleep(0.02);
    }

    die "run_sidecar: $sock does not accept connections within $TIMEOUT s\n";
}


# signal a sidecar; for KILL and TERM wait until it is reaped and return
# its wait status (TERM escalates to KILL after $TIMEOUT s: undef then)
sub kill_sidecar {
    my ($self, $h, $sig) = @_;

    $sig ||= 'TERM';

    return $h->{status} if defined $h->{status};

    kill $sig, $h->{pid} or die "kill_sidecar: $h->{pid}: $!\n";

    return 1 if $sig eq 'STOP' || $sig eq 'CONT';

    my $st = _gone($h->{pid}, $TIMEOUT);

    if (!defined $st) {
        push @{$self->{problems}},
            "sidecar $h->{name} did not exit within $TIMEOUT s of SIG$sig";
        kill 'CONT', $h->{pid};
        kill 'KILL', $h->{pid};
        _gone($h->{pid}, 5);
        $h->{status} = -1;
        return undef;
    }

    $h->{status} = $st;

    return $st;
}


# wait until a sidecar exits by itself; returns its wait status, or undef
# if it still runs after $timeout s (default $TIMEOUT)
sub wait_sidecar {
    my ($self, $h, $timeout) = @_;

    return $h->{status} if defined $h->{status};

    my $st = _gone($h->{pid}, $timeout || $TIMEOUT);
    $h->{status} = $st if defined $st;

    return $st;
}


# remember the end of error.log; read_log() returns what follows it
sub mark_log {
    my ($self) = @_;

    $self->{mark} = -s "$self->{dir}/error.log" || 0;
    return $self;
}


sub read_log {
    my ($self) = @_;

    my $log = $self->read_file('error.log');

    return substr($log, $self->{mark} > length $log ? 0 : $self->{mark});
}


# wait until error.log (after the mark) matches re; returns the match
sub wait_log {
    my ($self, $re, $timeout) = @_;

    my $end = time() + ($timeout || $TIMEOUT);

    while (time() < $end) {
        my $log = $self->read_log();
        return $1 // $& if $log =~ $re;
        sleep(0.05);
    }

    return undef;
}


sub done {
    my ($self) = @_;

    return if $self->{done}++;
    return if $self->{pid} != $$;

    $self->stop();

    for my $h (@{$self->{sidecars}}) {
        next if defined $h->{status};

        if (waitpid($h->{pid}, WNOHANG) == $h->{pid}) {
            $h->{status} = $?;
            push @{$self->{problems}},
                "sidecar $h->{name} exited by itself, status $?"
                unless $h->{may_exit} && $? == 0;
            next;
        }

        kill 'CONT', $h->{pid};
        my $st = $self->kill_sidecar($h, 'TERM');

        push @{$self->{problems}},
            "sidecar $h->{name} exited with status $st after SIGTERM"
            if defined $st && $st != 0;
    }

    my $tb = Test::More->builder;

    $self->_check_alerts() if ($tb->has_plan || $tb->current_test)
                              && !$tb->{Skip_All};

    if ($ENV{NGXSHM_KEEP}) {
        Test::More::diag("test directory kept: $self->{dir}");
    } else {
        rmtree($self->{dir});
    }
}


sub _check_alerts {
    my ($self) = @_;

    my $d = $self->{dir};
    my @found = @{$self->{problems}};

    my $log = substr($self->read_file('error.log'), $self->{log_from});
    my @lines = grep {
        my $l = $_;
        !grep { $l =~ $_ } @{$self->{allowed}};
    } $log =~ /^.*\[(?:alert|crit|emerg)\].*$/mg;

    push @found, map { "error.log: $_" } @lines;

    opendir my $dh, $d or die "$d: $!\n";
    my @files = sort grep { -f "$d/$_" } readdir $dh;
    closedir $dh;

    for my $f (grep { /^(?:asan|ubsan)\./ } @files) {
        push @found, "sanitizer report $f:\n"
            . _tail($self->read_file($f), 40);
    }

    for my $f (grep { /^(?:error\.log|.*\.stderr|.*\.stdout)$/ } @files) {
        my $text = $self->read_file($f);

        push @found, map { "$f: $_" } $text =~
            /^.*(?:runtime error:|ERROR: (?:Address|Leak)Sanitizer).*$/mg;

        push @found, map { "$f: $_" } $text =~ /^nginx: \[(?:alert|emerg)\].*$/mg
            if $f eq 'nginx.stderr';
    }

    Test::More::is(join("\n", @found), '', 'no alerts');
}


END {
    my $rc = $?;

    $_->done() for @OBJECTS;

    $? = $rc;
}


## HTTP client


sub _deadline {
    my ($opt) = @_;

    return time() + ($opt->{timeout} || $TIMEOUT);
}


sub _nonblock {
    my ($s) = @_;

    my $fl = fcntl($s, F_GETFL, 0);
    fcntl($s, F_SETFL, $fl | O_NONBLOCK) if defined $fl;
}


sub _buf {
    my ($s) = @_;

    ${*$s}{shmtest_buf} //= '';

    return \${*$s}{shmtest_buf};
}


# length of the first complete response in $$buf, or undef if it is not
# complete yet; -1 if it is delimited by the end of the connection
sub _response_length {
    my ($buf, $head) = @_;

    my $pos = 0;

    for ( ;; ) {
        my $end = index($$buf, "\r\n\r\n", $pos);
        return undef if $end < 0;

        my $hdr = substr($$buf, $pos, $end - $pos);
        my $body = $end + 4;

        $hdr =~ m{^HTTP/\d\.\d (\d{3})} or return -1;
        my $status = $1;

        if ($status >= 100 && $status < 200 && $status != 101) {
            $pos = $body;
            next;
        }

        return $body if $head || $status == 204 || $status == 304;

        if ($hdr =~ /^Transfer-Encoding:[ \t]*chunked[ \t\r]*$/mi) {
            my $p = $body;

            for ( ;; ) {
                my $nl = index($$buf, "\r\n", $p);
                return undef if $nl < 0;

                my $line = substr($$buf, $p, $nl - $p);
                $line =~ /^([0-9a-fA-F]+)/ or return -1;
                my $size = hex $1;
                $p = $nl + 2;

                if ($size == 0) {
                    for ( ;; ) {
                        $nl = index($$buf, "\r\n", $p);
                        return undef if $nl < 0;
                        return $nl + 2 if $nl == $p;
                        $p = $nl + 2;
                    }
                }

                $p += $size + 2;
                return undef if $p > length $$buf;
            }
        }

        if ($hdr =~ /^Content-Length:[ \t]*(\d+)/mi) {
            return length $$buf >= $body + $1 ? $body + $1 : undef;
        }

        return -1;
    }
}


# send $out (may be '') and read: a whole response (one => 1) or until
# the peer closes; returns what was read
sub _io {
    my ($s, $out, $opt) = @_;

    my $end = _deadline($opt);
    my $buf = _buf($s);
    my $sel = IO::Select->new($s);
    my $eof = 0;

    _nonblock($s);

    for ( ;; ) {
        if ($opt->{one} && !length $out) {
            my $len = _response_length($buf, $opt->{head});

            if (defined $len && $len >= 0) {
                return substr($$buf, 0, $len, '');
            }
        }

        last if $eof;

        my $left = $end - time();

        if ($left <= 0) {
            $opt->{timed_out} = 1;
            last;
        }

        my ($r, $w) = IO::Select->select($sel, length $out ? $sel : undef,
                                         undef, $left);

        if ($w && @$w) {
            my $n = syswrite($s, $out, 65536);

            if (defined $n) {
                substr($out, 0, $n, '');

            } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $out = '';
            }
        }

        if ($r && @$r) {
            my $n = sysread($s, $$buf, 65536, length $$buf);

            if (defined $n && $n == 0) {
                $eof = 1;

            } elsif (!defined $n && $! != EAGAIN && $! != EWOULDBLOCK
                     && $! != EINTR)
            {
                $eof = 1;
            }
        }
    }

    my $all = $$buf;
    $$buf = '';

    return $all;
}


# http($port, $raw_request, %opt): sends the request and returns the raw
# response text, read until the server closes the connection (or until
# the timeout, 10 s by default).  Options:
#   start => 1   return the connected socket after sending; http_end()
#   socket => $s use this connection; with one => 1, read one response
#   one => 1     return after one complete response (for keepalive)
#   head => 1    the response to read has no body (HEAD)
#   timeout => s
sub http {
    my ($port, $request, %opt) = @_;

    my $s = $opt{socket};

    if (!$s) {
        $s = _connect_tcp($port) or do {
            Test::More::diag("http: connect to 127.0.0.1:$port: $!");
            return '';
        };
    }

    if ($opt{start}) {
        my $end = _deadline(\%opt);
        my $out = $request;
        my $sel = IO::Select->new($s);

        _nonblock($s);

        while (length $out && time() < $end) {
            next unless $sel->can_write($end - time());
            my $n = syswrite($s, $out, 65536);
            substr($out, 0, $n, '') if defined $n;
            last if !defined $n && $! != EAGAIN && $! != EINTR;
        }

        return $s;
    }

    my $r = _io($s, $request, \%opt);

    Test::More::diag("http: timed out after reading " . length($r)
                     . " bytes") if $opt{timed_out};

    return $r;
}


# finish a request started with http(..., start => 1)
sub http_end {
    my ($s, %opt) = @_;

    my $r = _io($s, '', \%opt);

    Test::More::diag("http_end: timed out after reading " . length($r)
                     . " bytes") if $opt{timed_out};
    close $s;

    return $r;
}


# read exactly one response from a connection, keeping what follows
sub http_read_response {
    my ($s, %opt) = @_;

    my $o = { %opt, one => 1 };
    my $r = _io($s, '', $o);

    Test::More::diag("http_read_response: timed out after reading "
                     . length($r) . " bytes") if $o->{timed_out};

    return $r;
}


sub _request {
    my ($method, $uri, $body, @h) = @_;

    my $opt = ref $h[-1] eq 'HASH' ? pop @h : {};
    my $proto = $opt->{proto} || 'HTTP/1.1';
    my $r = "$method $uri $proto\r\n";

    $r .= "Host: localhost\r\n" unless $opt->{no_host};
    $r .= "Connection: close\r\n" unless $opt->{keepalive};

    while (my ($n, $v) = splice @h, 0, 2) {
        $r .= "$n: $v\r\n";
    }

    $r .= "Content-Length: " . length($body) . "\r\n"
        if defined $body && !$opt->{no_length};

    $r .= "\r\n";
    $r .= $body if defined $body;

    return ($r, $opt);
}


# http_get($port, $uri, NAME => VALUE, ..., { options })
# headers are a list: order and duplicates are kept.  Options as http(),
# plus proto => 'HTTP/1.0', keepalive => 1 (no "Connection: close")
sub http_get {
    my ($port, $uri, @h) = @_;

    my ($r, $opt) = _request('GET', $uri, undef, @h);

    return http($port, $r, %$opt);
}


sub http_head {
    my ($port, $uri, @h) = @_;

    my ($r, $opt) = _request('HEAD', $uri, undef, @h);

    return http($port, $r, %$opt, head => 1);
}


sub http_post {
    my ($port, $uri, $body, @h) = @_;

    my ($r, $opt) = _request('POST', $uri, $body, @h);

    return http($port, $r, %$opt);
}


# (status, [[name, value], ...], body) of a raw response; interim 1xx
# responses are skipped, a chunked body is decoded.  Status is undef if
# the text is not a response.
sub parse_response {
    my ($raw) = @_;

    return (undef, [], '') unless defined $raw;

    my ($head, $body);

    for ( ;; ) {
        ($head, $body) = split /\r\n\r\n/, $raw, 2;
        return (undef, [], '') unless defined $head
                                      && $head =~ m{^HTTP/\d\.\d (\d{3})};
        my $status = $1;
        last unless $status >= 100 && $status < 200 && $status != 101;
        $raw = defined $body ? $body : '';
    }

    $body = '' unless defined $body;

    my ($line, @lines) = split /\r\n/, $head;
    $line =~ m{^HTTP/\d\.\d (\d{3})};
    my $status = $1;
    my @headers;

    for (@lines) {
        if (/^[ \t]/ && @headers) {
            $headers[-1][1] .= " $_";
            next;
        }

        my ($n, $v) = /^([^:]*):[ \t]*(.*?)[ \t]*$/ or next;
        push @headers, [$n, $v];
    }

    if (grep { lc $_->[0] eq 'transfer-encoding'
               && $_->[1] =~ /chunked/i } @headers)
    {
        # by offsets: editing a body of many megabytes in place is slow
        my $decoded = '';
        my $p = 0;

        for ( ;; ) {
            my $nl = index($body, "\r\n", $p);
            last if $nl < 0;

            substr($body, $p, $nl - $p) =~ /^([0-9a-fA-F]+)/ or last;
            my $size = hex $1;
            last if $size == 0;

            $decoded .= substr($body, $nl + 2, $size);
            $p = $nl + 2 + $size + 2;
        }

        $body = $decoded;
    }

    return ($status, \@headers, $body);
}


# first value of a header (case-insensitive name), or undef
sub header_value {
    my ($headers, $name) = @_;

    my @v = header_values($headers, $name);

    return $v[0];
}


sub header_values {
    my ($headers, $name) = @_;

    return map { $_->[1] } grep { lc $_->[0] eq lc $name } @$headers;
}


# the echo's X-Echo-Size body: 'a' .. 'z' repeating
sub pattern {
    my ($n) = @_;

    my $az = join '', 'a' .. 'z';

    return substr($az x (int($n / 26) + 1), 0, $n);
}


## /proc helpers


# resident set size of a process, KiB
sub proc_rss_kb {
    my ($pid) = @_;

    my $s = _slurp("/proc/$pid/status") or return undef;

    return $s =~ /^VmRSS:\s+(\d+)/m ? $1 : undef;
}


# user + system CPU time of a process (all threads), clock ticks
sub proc_cpu_ticks {
    my ($pid) = @_;

    my $s = _slurp("/proc/$pid/stat") or return undef;
    $s =~ s/^.*\)\s+//s;
    my @f = split ' ', $s;

    # after "(comm)": state is field 3, utime 14 and stime 15
    return $f[11] + $f[12];
}


1;
