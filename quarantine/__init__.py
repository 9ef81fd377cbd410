"""quarantine: junk filing, Bayes training and mail authentication for qmail + vpopmail.

Nothing is imported here: `quarantine deliver` runs for every incoming message
and pays only for the modules it uses.
"""

__version__ = "0.1.0"
