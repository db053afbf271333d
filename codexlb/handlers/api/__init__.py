"""The JSON admin API under /api/ (the CLI and the dashboard use it)."""
