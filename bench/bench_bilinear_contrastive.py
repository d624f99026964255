"""Benchmark of the bilinear contrastive loss (DESIGN §6), forward + backward to anchors, positives
and W, D = 512, B = 256…16 384: the reference (the plain PyTorch a user writes: `[B, B]` logits and
`F.cross_entropy`, which is also the peer), every backend, and the speed floor of any exact method:
its GEMMs in torch at the input dtype, into preallocated outputs: Ã = A W, the three B²D products
(S = Ã Pᵀ, then S P and Sᵀ Ã for the gradients), and the two B·D² products of the backward through
W (dA = dÃ Wᵀ, dW = Aᵀ dÃ). The reference runs the same products plus its passes over [B, B], so
reference time / floor time bounds the speed-up any backend can reach at that precision."""
from __future__ import annotations

import torch

from pyaudiok.ops.bilinear_contrastive import OP, bilinear_contrastive_loss

from .harness import Candidate, Case, backend_candidates, compiled, with_backend, with_tf32

D = 512
SIZES = {"cpu": (256, 1024, 4096, 8192), "cuda": (1024, 4096, 8192, 16384)}
QUICK = {"cpu": (1024,), "cuda": (4096,)}
DTYPE = {"cpu": torch.float32, "cuda": torch.float32}


def _loss_step(a, p, w):
    def run():
        loss = bilinear_contrastive_loss(a, p, w)
        loss.backward()
        a.grad = p.grad = w.grad = None
        return loss.detach()
    return run


def _step(backend, a, p, w):
    return with_backend(backend, _loss_step(a, p, w))


def _gemm_floor(a, p, w):
    """The products every exact method runs, on buffers allocated once (S stands in for the
    gradient of the scores, d_at for that of Ã: the same shapes)."""
    scores = a.new_empty((a.shape[0], p.shape[0]))
    at, d_at, d_p, d_a, d_w = (torch.empty_like(t) for t in (a, a, p, a, w))

    def run():
        torch.mm(a, w, out=at)
        torch.mm(at, p.T, out=scores)
        torch.mm(scores, p, out=d_at)
        torch.mm(scores.T, at, out=d_p)
        torch.mm(d_at, w.T, out=d_a)
        torch.mm(a.T, d_at, out=d_w)
    return run


def contrastive_case(device: torch.device, B: int) -> Case:
    dtype = DTYPE[device.type]
    gen = torch.Generator().manual_seed(B)
    a = torch.randn(B, D, generator=gen).tanh()
    p = (a + 0.1 * torch.randn(B, D, generator=gen)).tanh()
    w = torch.randn(D, D, generator=gen) / D
    a, p, w = (x.to(device, dtype).requires_grad_() for x in (a, p, w))

    def check(output, reference):
        return f"loss diff {abs(output.item() - reference.item()):.1e}"

    cands = [Candidate("reference", "reference", _step("reference", a, p, w))]
    cands += backend_candidates(OP, device, dtype, (a, p, w, False, "mean"), lambda b: _step(b, a, p, w), check)
    cands.append(Candidate("auto (dispatch by size)", "backend", _loss_step(a, p, w), check=check))
    if device.type == "cuda":  # what a user who lets torch's matmuls use TF32 gets, and would pick instead
        cands.append(Candidate("triton, TF32 allowed", "backend", with_tf32(_step("triton", a, p, w)), check=check))
        cands.append(Candidate("reference, TF32 allowed", "peer", with_tf32(_step("reference", a, p, w)),
                               check=check))
    cands.append(compiled("reference, torch.compile", _loss_step(a, p, w), check=check))
    floor = _gemm_floor(a.detach(), p.detach(), w.detach())
    cands.append(Candidate("floor: its GEMMs (3 B²D + 3 BD²)", "floor", floor))
    return Case("bilinear_contrastive.fwd+bwd", {"B": B, "D": D, "dtype": str(dtype).replace("torch.", "")}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [contrastive_case(device, B) for B in (QUICK if quick else SIZES)[device.type]]
