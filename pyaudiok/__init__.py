"""pyaudiok: fused, fast PyTorch kernels for audio and sequence-modelling research systems.

    import pyaudiok
    out = pyaudiok.ops.residual_vq(x, codebooks)          # backend chosen by device
    with pyaudiok.use_backend("reference"):                # or PYAUDIOK_BACKEND=reference
        ref = pyaudiok.ops.residual_vq(x, codebooks)
    print(pyaudiok.info())                                 # op × backend table with reasons
"""
from ._version import __version__
from .dispatch import BackendFallbackWarning, BackendUnavailableError, use_backend
from . import ops
from .info import info

__all__ = ["__version__", "ops", "use_backend", "info", "BackendUnavailableError", "BackendFallbackWarning"]
