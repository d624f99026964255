"""The fused ops. Each module holds one op: its public function, reference, checks, registration
and backend dispatch (DESIGN.md, "Ops: the contract")."""
from .fourier_crop import fourier_crop, fourier_crop_output_size
from .rvq import RVQResult, residual_vq, rvq_decode

__all__ = ["RVQResult", "residual_vq", "rvq_decode", "fourier_crop", "fourier_crop_output_size"]
