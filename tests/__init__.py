"""Tunesmith's tests; a package so that `tests.helpers`, `tests.ml.tiny_models` and the rest import
the same way under pytest and from the bench scripts (the repository root on sys.path)."""
