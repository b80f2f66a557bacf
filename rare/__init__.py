"""RARe core: the augmented-query format, example pools and selection, model loading, collections."""

__version__ = "0.1.0"
