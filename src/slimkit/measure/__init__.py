"""Measurement (filled in below)."""
from slimkit.measure._accuracy import accuracy

__all__ = ["accuracy"]
