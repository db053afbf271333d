"""codexlb: pool many ChatGPT (Codex) accounts behind one OpenAI-compatible endpoint."""

__version__ = "0.1.0"
