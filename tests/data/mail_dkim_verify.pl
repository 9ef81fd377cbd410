#!/usr/bin/perl
# Independent DKIM verifier for the tests: Perl Mail::DKIM (Debian's
# libmail-dkim-perl) reads a message on stdin and prints its result line
# (pass / fail (...) / invalid (...) / none), asking $DNS_HOST (default
# 127.0.0.1) on port $DNS_PORT. With DKIM_EACH set it prints one line per
# signature instead: `SELECTOR RESULT-DETAIL`.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;

my $port = $ENV{DNS_PORT} or die "DNS_PORT is not set\n";
my $host = $ENV{DNS_HOST} || "127.0.0.1";
Mail::DKIM::DNS::resolver(
    Net::DNS::Resolver->new(nameservers => [$host], port => $port, recurse => 1));
my $dkim = Mail::DKIM::Verifier->new();
while (<STDIN>) {
    chomp;
    s/\015$//;
    $dkim->PRINT("$_\015\012");
}
$dkim->CLOSE;
if ($ENV{DKIM_EACH}) {
    foreach my $signature ($dkim->signatures) {
        print $signature->selector, " ", $signature->result_detail, "\n";
    }
} else {
    print $dkim->result_detail, "\n";
}
