"""The two classes a message is learned as, shared by discovery (a folder's
kind) and the learners without either importing the other.
"""

SPAM, HAM = "spam", "ham"
