"""Benchmarks that print figures (`make bench`); speed targets live here, not in timed unit tests."""
