"""The full systems, built from pyaudiok.nn modules."""
