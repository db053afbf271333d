"""Fuzzing codexlb as a hostile client would: generated requests against a real `codexlb serve` in front of
a real `codexlb sim`, over loopback sockets (see `harness`). Bounded so CI stays fast; more cases on demand
with `CODEXLB_FUZZ_EXAMPLES=N` (cases per test, fresh ones on every run)."""
