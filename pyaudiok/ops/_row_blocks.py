"""What the ATen-blocked CPU backends share: a softmax over rows of a score block computed in place,
and the block size. The ops that use them (bilinear_contrastive, distance_logsumexp) form a block
of scores with one GEMM, then reduce it while it is in cache, and never hold the whole score matrix."""
from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 22  # 16 MiB of fp32 scores per row block (smaller blocks slow the GEMMs)

# exp of arguments below this underflows through float32's denormal range, which x86 CPUs compute
# tens of times slower (microcode assists); clamping there changes a probability by < 2e-38.
EXP_FLOOR = -87.0


def block_rows(total: int, width: int) -> int:
    """Rows per block of a [rows, width] score block of at most BLOCK_ELEMENTS (at least one row)."""
    return max(1, min(total, BLOCK_ELEMENTS // max(width, 1)))


def exp_(t: torch.Tensor) -> torch.Tensor:
    """exp in place, arguments clamped at EXP_FLOOR (no denormal results)."""
    return t.clamp_min_(EXP_FLOOR).exp_()


def softmax_(s: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp(s − top) of a score block, normalised over rows if asked, and the rows' logsumexp),
    computed in place over s: no temporary of the block's size."""
    top = s.amax(dim=1, keepdim=True)
    e = exp_(s.sub_(top))
    total = e.sum(1, keepdim=True)
    if normalize:
        e.div_(total)
    return e, total.log_().add_(top)[:, 0]
