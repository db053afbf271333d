"""Talking to the ChatGPT backend: the shared client session and per-account headers."""
