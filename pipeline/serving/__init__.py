"""Serving: the Triton model repository publish writes, and the real-Triton smoke check.

Never rename this package `triton`: a folder of that name on sys.path shadows
the `triton` package that transformers imports.
"""
