#!/usr/bin/perl
# The old way of verifying on the way in, for bench/auth: a QMAILQUEUE wrapper
# that reads the message on fd 0 and the envelope on fd 1, verifies DKIM with
# Perl Mail::DKIM (DNS from 127.0.0.1:$DNS_PORT), adds an
# Authentication-Results header and hands message and envelope to the real
# qmail-queue on its fd 0 and fd 1, exiting with its code.
# usage: mail_dkim_verify_queue.pl QMAIL-QUEUE AUTHSERV-ID
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;
use POSIX ();

my ($qmail_queue, $authserv) = @ARGV;
die "usage: $0 QMAIL-QUEUE AUTHSERV-ID\n" unless $authserv;
my $port = $ENV{DNS_PORT} or die "DNS_PORT is not set\n";
$SIG{PIPE} = 'IGNORE';

binmode STDIN;
my $message = do { local $/; <STDIN> };
open(my $env_in, "<&=", 1) or exit 54;
binmode $env_in;
my $envelope = do { local $/; <$env_in> };
exit 54 unless defined $message && defined $envelope;

Mail::DKIM::DNS::resolver(
    Net::DNS::Resolver->new(nameservers => ["127.0.0.1"], port => $port, recurse => 1));
my $dkim = Mail::DKIM::Verifier->new();
for my $line (split /\012/, $message) {
    $line =~ s/\015$//;
    $dkim->PRINT("$line\015\012");
}
$dkim->CLOSE;
my $result = $dkim->result;
my $domain = $dkim->signature ? $dkim->signature->domain : undef;
my $header = "Authentication-Results: $authserv; dkim=$result"
    . (defined $domain ? " header.d=$domain" : "") . "\n";

pipe(my $msg_r, my $msg_w) or exit 81;
pipe(my $env_r, my $env_w) or exit 81;
my $pid = fork;
exit 81 unless defined $pid;
if ($pid == 0) {
    POSIX::dup2(fileno $msg_r, 0) or POSIX::_exit(81);
    POSIX::dup2(fileno $env_r, 1) or POSIX::_exit(81);
    exec { $qmail_queue } $qmail_queue or POSIX::_exit(81);
}
close $msg_r;
close $env_r;
binmode $msg_w;
binmode $env_w;
print {$msg_w} $header, $message;
close $msg_w;
print {$env_w} $envelope;
close $env_w;
waitpid($pid, 0);
exit($? & 127 ? 81 : $? >> 8);
