#!/usr/bin/perl
# Independent DomainKeys (RFC 4870) signer for the verification tests: Perl
# Mail::DKIM signs stdin with a DomainKey-Signature (rsa-sha1) and prints the
# signed message with LF line ends, as qmail stores it.
# usage: mail_dk_sign.pl KEYFILE DOMAIN SELECTOR [nofws|simple] [HEADERS]
# HEADERS (e.g. "from:to:subject") adds an h= tag listing them.
use strict;
use warnings;
use Mail::DKIM::Signer;
use Mail::DKIM::DkSignature;

my ($keyfile, $domain, $selector, $method, $headers) = @ARGV;
die "usage: $0 KEYFILE DOMAIN SELECTOR [nofws|simple] [HEADERS]\n" unless $selector;
my @lines = <STDIN>;
my $policy = sub {
    my $dk = shift;
    $dk->add_signature(Mail::DKIM::DkSignature->new(
        Algorithm => "rsa-sha1",
        Method    => $method || "nofws",
        Domain    => $domain,
        Selector  => $selector,
        ($headers ? (Headers => $headers) : ()),
    ));
    return;
};
my $dk = Mail::DKIM::Signer->new(Policy => $policy, KeyFile => $keyfile);
for (@lines) {
    my $line = $_;
    $line =~ s/\015?\012$//;
    $dk->PRINT("$line\015\012");
}
$dk->CLOSE;
my $signature = $dk->signature->as_string;
$signature =~ s/\015\012/\012/g;
print $signature, "\n", @lines;
