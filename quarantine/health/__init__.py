"""The checks `quarantine doctor` runs, one module per family: what a uid may
do with a path (access), the mailbox walk (mailboxes), the Bayes database
(bayesdb), signing keys and DNS (signing), configuration, queue and trainer
(install). quarantine/doctor.py runs them and prints the findings.
"""
