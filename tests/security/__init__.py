"""Regression tests for attacks on vmkeep (issue #24), one per finding: see docs/security.md."""
