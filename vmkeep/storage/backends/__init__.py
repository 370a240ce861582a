"""Backend implementations: local file systems, any fsspec target, and test wrappers."""
