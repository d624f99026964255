from .model import COLA, COLAConfig, LogMel

__all__ = ["COLA", "COLAConfig", "LogMel"]
