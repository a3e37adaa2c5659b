#!/usr/bin/perl

# Copyright (C) ngxshm authors
#
# A small style checker in the spirit of OpenResty's ngx-releng.
# Usage: tools/check-style.pl FILE.c FILE.h ...
#
# Reports, as "file:line: message": lines longer than 80 columns, tabs,
# trailing whitespace, "//" comments, and allocations whose result is not
# compared with NULL on the next non-empty line after the statement.
# Exits 1 if it found anything, 2 if a file cannot be read.

use strict;
use warnings;

my $ALLOC = qr/\b(?:ngx_palloc|ngx_pcalloc|ngx_pnalloc|ngx_alloc|ngx_calloc
                  |malloc|calloc|realloc|strdup)\s*\(/x;

my $found = 0;
my $rc = 0;
my @findings;

for my $file (@ARGV) {
    my $fh;

    if (!open $fh, '<', $file) {
        print STDERR "$file: $!\n";
        $rc = 2;
        next;
    }

    my @lines = <$fh>;
    close $fh;
    chomp @lines;

    my @code = strip_comments_and_strings(\@lines, $file);

    for my $i (0 .. $#lines) {
        my $l = $lines[$i];
        my $n = $i + 1;

        report($file, $n, 'line longer than 80 columns')
            if length $l > 80;
        report($file, $n, 'tab') if $l =~ /\t/;
        report($file, $n, 'trailing whitespace') if $l =~ /[ \t]$/;

        check_alloc($file, \@code, $i);
    }

    for (sort { $a->[0] <=> $b->[0] } @findings) {
        print "$file:$_->[0]: $_->[1]\n";
    }

    @findings = ();
}

exit($rc || ($found ? 1 : 0));


sub report {
    my ($file, $n, $msg) = @_;

    push @findings, [$n, $msg];
    $found++;
}


# the lines with comments and the contents of string and character
# literals blanked out; reports "//" comments on the way
sub strip_comments_and_strings {
    my ($lines, $file) = @_;

    my @out;
    my $in_comment = 0;

    for my $i (0 .. $#$lines) {
        my $l = $lines->[$i];
        my $o = '';
        my $p = 0;

        while ($p < length $l) {
            my $c = substr($l, $p, 1);
            my $c2 = substr($l, $p, 2);

            if ($in_comment) {
                if ($c2 eq '*/') {
                    $in_comment = 0;
                    $o .= '  ';
                    $p += 2;
                } else {
                    $o .= ' ';
                    $p++;
                }
                next;
            }

            if ($c2 eq '/*') {
                $in_comment = 1;
                $o .= '  ';
                $p += 2;
                next;
            }

            if ($c2 eq '//') {
                report($file, $i + 1, '"//" comment');
                last;
            }

            if ($c eq '"' || $c eq "'") {
                my $q = $c;
                $o .= $q;
                $p++;

                while ($p < length $l) {
                    $c = substr($l, $p, 1);

                    if ($c eq '\\') {
                        $o .= '  ';
                        $p += 2;
                        next;
                    }

                    $p++;

                    if ($c eq $q) {
                        $o .= $q;
                        last;
                    }

                    $o .= ' ';
                }

                next;
            }

            $o .= $c;
            $p++;
        }

        push @out, $o;
    }

    return @out;
}


# "x = ngx_palloc(...);" must be followed by "if (x == NULL ...)"
sub check_alloc {
    my ($file, $code, $i) = @_;

    my $l = $code->[$i];

    return if $l =~ /^\s*#/;

    $l =~ /([\w\]\)\.>*-][\w\s\[\]\(\)\.\->*]*?)\s*=\s*
           (?:\([^()]*\)\s*)?$ALLOC/x or return;

    my $lhs = $1;

    # the variable: the last operand of the left side ("char *p" -> "p")
    $lhs =~ /([\w\.\->\[\]()]+)\s*$/ or return;
    my $var = $1;
    $var =~ s/^\(+//;

    # the end of the statement
    my $j = $i;
    my $depth = 0;

    for ( ; $j <= $#$code; $j++) {
        my $s = $code->[$j];
        $s = substr($s, index($s, '=')) if $j == $i;
        $depth += () = $s =~ /\(/g;
        $depth -= () = $s =~ /\)/g;
        last if $depth <= 0 && $s =~ /;\s*$/;
    }

    # the next non-empty line
    $j++;
    $j++ while $j <= $#$code && $code->[$j] =~ /^\s*$/;

    my $next = $j <= $#$code ? $code->[$j] : '';
    (my $flat = $next) =~ s/\s+//g;
    (my $v = $var) =~ s/\s+//g;

    return if index($flat, "$v==NULL") >= 0 || index($flat, "NULL==$v") >= 0;

    report($file, $i + 1, "allocation into \"$var\" not checked against NULL"
                          . " on the next line");
}
