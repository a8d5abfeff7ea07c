"""Benchmarks that print tables; never part of the test run (see docs/benchmarks.md)."""
