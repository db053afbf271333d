"""Signing in to ChatGPT accounts: OAuth login flows, Codex CLI auth files and JWT claims."""
