"""Embedded data: generated on the fly, no network."""
