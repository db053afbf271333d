"""Admission: bounded waits for bounded capacity, then an honest 429 (see `gate`)."""
