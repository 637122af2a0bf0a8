"""A toy model family that lives outside the package: a bigram language model (see test_toy_family.py)."""
