"""The full systems, built from pyaudiok.nn modules."""
from .diffstride import resnet18_diffstride
