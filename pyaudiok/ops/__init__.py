"""The fused ops. Each module holds one op: its public function, reference, checks, registration
and backend dispatch (DESIGN.md, "Ops: the contract")."""
from .latent_attention import latent_cross_attention
from .rvq import RVQResult, residual_vq, rvq_decode

__all__ = ["RVQResult", "residual_vq", "rvq_decode", "latent_cross_attention"]
