"""The fused ops. Each module holds one op: its public function, reference, checks, registration
and backend dispatch (DESIGN.md, "Ops: the contract")."""
from .rvq import RVQResult, residual_vq, rvq_decode
from .soft_rank import soft_rank, soft_sort
from .sinkhorn import SinkhornResult, log_sinkhorn_normalize, sinkhorn, sinkhorn_rank, sinkhorn_sort

__all__ = ["RVQResult", "residual_vq", "rvq_decode"]
__all__ += ["soft_rank", "soft_sort"]
__all__ += ["SinkhornResult", "log_sinkhorn_normalize", "sinkhorn", "sinkhorn_rank", "sinkhorn_sort"]
