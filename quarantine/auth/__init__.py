"""Mail authentication for qmail: DKIM and DomainKeys signing and verification,
SPF, DMARC, Authentication-Results, keys and DNS records. Nothing is imported
here: dkimpy and pyspf cost about 60 ms each and only the commands that use
them pay for them.
"""
