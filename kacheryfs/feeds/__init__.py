"""Signed append-only logs (see docs/architecture.md; arriving after the network engine)."""
