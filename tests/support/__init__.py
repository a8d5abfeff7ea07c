"""Helpers that several test modules share: plain functions and classes, never fixtures (those stay in
the conftest.py files, which import from here). No test module imports another test module or a
conftest; what they share lives here (tests/test_layout.py holds the line)."""
