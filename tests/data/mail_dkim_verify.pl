#!/usr/bin/perl
# Independent DKIM verifier for the tests: Perl Mail::DKIM (Debian's
# libmail-dkim-perl) reads a message on stdin and prints its result line
# (pass / fail (...) / invalid (...) / none), asking 127.0.0.1:$DNS_PORT.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;

my $port = $ENV{DNS_PORT} or die "DNS_PORT is not set\n";
Mail::DKIM::DNS::resolver(
    Net::DNS::Resolver->new(nameservers => ["127.0.0.1"], port => $port, recurse => 1));
my $dkim = Mail::DKIM::Verifier->new();
while (<STDIN>) {
    chomp;
    s/\015$//;
    $dkim->PRINT("$_\015\012");
}
$dkim->CLOSE;
print $dkim->result_detail, "\n";
