"""Test-only support code (never installed: the wheel packages ``vmkeep*`` only)."""
