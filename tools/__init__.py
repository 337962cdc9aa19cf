"""Maintainers' tools that are not part of the installed package (generators of the shipped data)."""
