#!/usr/bin/perl
# Independent DKIM signer for the tests and benchmarks: Perl Mail::DKIM
# signs the message on stdin (relaxed/relaxed) and prints the signed message
# with LF line ends, as qmail stores it.
# usage: mail_dkim_sign.pl KEYFILE DOMAIN SELECTOR [ALGORITHM]
# Optional, from the environment: DKIM_HEADERS (the h= list, e.g. "to:subject"),
# DKIM_QUERY (the q= value), DKIM_IDENTITY (the i= value).
use strict;
use warnings;
use Mail::DKIM::Signer;
use Mail::DKIM::Signature;
use Mail::DKIM::TextWrap;

my ($keyfile, $domain, $selector, $algorithm) = @ARGV;
die "usage: $0 KEYFILE DOMAIN SELECTOR [rsa-sha256]\n" unless $selector;
my @lines = <STDIN>;
my %args = (
    Algorithm => $algorithm || "rsa-sha256",
    Method    => "relaxed",
    Domain    => $domain,
    Selector  => $selector,
);
my $dkim;
if ($ENV{DKIM_HEADERS} || $ENV{DKIM_QUERY} || $ENV{DKIM_IDENTITY}) {
    my $policy = sub {
        my $signer = shift;
        my $sig = Mail::DKIM::Signature->new(
            %args,
            Headers => $ENV{DKIM_HEADERS} || $signer->headers,
            ($ENV{DKIM_QUERY} ? (Query => $ENV{DKIM_QUERY}) : ()),
            ($ENV{DKIM_IDENTITY} ? (Identity => $ENV{DKIM_IDENTITY}) : ()),
        );
        $signer->add_signature($sig);
        return;
    };
    $dkim = Mail::DKIM::Signer->new(Policy => $policy, KeyFile => $keyfile);
} else {
    $dkim = Mail::DKIM::Signer->new(%args, KeyFile => $keyfile);
}
for (@lines) {
    my $line = $_;
    $line =~ s/\015?\012$//;
    $dkim->PRINT("$line\015\012");
}
$dkim->CLOSE;
my $signature = $dkim->signature->as_string;
$signature =~ s/\015\012/\012/g;
print $signature, "\n", @lines;
