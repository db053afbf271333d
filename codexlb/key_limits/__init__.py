"""Per-key limits: what a key may do (`policy`), its spend counted across the fleet (`meter`), and the check every
model request passes (`enforce`)."""
