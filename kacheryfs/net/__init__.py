"""Peers, discovery and transfer (the network engine; see docs/architecture.md, arriving next)."""
