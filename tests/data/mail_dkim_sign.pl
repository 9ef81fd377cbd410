#!/usr/bin/perl
# Independent DKIM signer for the tests and benchmarks: Perl Mail::DKIM
# signs the message on stdin (relaxed/relaxed) and prints the signed message
# with LF line ends, as qmail stores it.
# usage: mail_dkim_sign.pl KEYFILE DOMAIN SELECTOR [ALGORITHM]
use strict;
use warnings;
use Mail::DKIM::Signer;
use Mail::DKIM::TextWrap;

my ($keyfile, $domain, $selector, $algorithm) = @ARGV;
die "usage: $0 KEYFILE DOMAIN SELECTOR [rsa-sha256]\n" unless $selector;
my @lines = <STDIN>;
my $dkim = Mail::DKIM::Signer->new(
    Algorithm => $algorithm || "rsa-sha256",
    Method    => "relaxed",
    Domain    => $domain,
    Selector  => $selector,
    KeyFile   => $keyfile,
);
for (@lines) {
    my $line = $_;
    $line =~ s/\015?\012$//;
    $dkim->PRINT("$line\015\012");
}
$dkim->CLOSE;
my $signature = $dkim->signature->as_string;
$signature =~ s/\015\012/\012/g;
print $signature, "\n", @lines;
