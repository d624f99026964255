"""Benchmark of residual vector quantization (DESIGN §2): 8 stages, K = 1024, D = 128, against
the reference, every backend, the peers `vector-quantize-pytorch` ResidualVQ and encodec's
ResidualVectorQuantizer (codebooks copied in, so all compute the same thing), and the speed floor:
the stage matmuls alone (`r @ C_q.T` for each stage at full size)."""
from __future__ import annotations

import torch

from pyaudiok.ops.rvq import DECODE, FORWARD, residual_vq, rvq_decode

from .harness import Candidate, Case, backend_candidates, compiled, with_backend
from .peers import load, load_encodec_quantizer

Q, K, D = 8, 1024, 128
ROWS = {"cpu": 16384, "cuda": 262144}
QUICK_ROWS = {"cpu": 4096, "cuda": 65536}


def _inputs(device, rows, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, D, generator=gen).to(device)
    # Codebooks spread like the data they quantize at each stage (residuals shrink stage by stage).
    scale = torch.linspace(1.0, 0.3, Q)[:, None, None]
    codebooks = (torch.randn(Q, K, D, generator=gen) * scale).to(device)
    return x.requires_grad_(requires_grad), codebooks


def _codes_check(codes_of):
    def check(output, reference):
        ours, ref = codes_of(output), reference.codes
        same = (ours.reshape(ref.shape) == ref).float().mean().item()
        return "codes identical" if same == 1.0 else f"codes {100 * same:.3f}% identical"
    return check


def _vqp_residual_vq(codebooks):
    module, reason = load("vector_quantize_pytorch", "vector-quantize-pytorch")
    if module is None:
        return None, reason
    rvq = module.ResidualVQ(dim=D, num_quantizers=Q, codebook_size=K, rotation_trick=False).to(codebooks.device)
    for q, layer in enumerate(rvq.layers):
        layer._codebook.embed.data.copy_(codebooks[q][None])
        layer._codebook.initted.data.fill_(True)
    return rvq.eval(), None


def _encodec_rvq(codebooks):
    cls, reason = load_encodec_quantizer()
    if cls is None:
        return None, reason
    rvq = cls(dimension=D, n_q=Q, bins=K).to(codebooks.device)
    for q, layer in enumerate(rvq.vq.layers):
        layer._codebook.embed.data.copy_(codebooks[q])
        layer._codebook.inited.data.fill_(True)
    return rvq.eval(), None


def forward_case(device, rows) -> Case:
    x, codebooks = _inputs(device, rows)
    check = _codes_check(lambda out: out.codes)
    cands = [Candidate("reference", "reference", with_backend("reference", lambda: residual_vq(x, codebooks)))]
    cands += backend_candidates(FORWARD, device, x.dtype, (x, codebooks, Q),
                                 lambda b: with_backend(b, lambda: residual_vq(x, codebooks)), check)
    cands.append(compiled("reference, torch.compile", lambda: residual_vq(x, codebooks), check=check))
    vqp, reason = _vqp_residual_vq(codebooks)

    def run_vqp():
        with torch.no_grad():
            return vqp(x[None])
    cands.append(Candidate("vector-quantize-pytorch ResidualVQ", "peer", run_vqp if vqp else None, skip=reason,
                           check=_codes_check(lambda out: out[1][0])))
    enc, reason = _encodec_rvq(codebooks)
    x_bdt = x.T[None].contiguous()

    def run_encodec():
        with torch.no_grad():
            return enc(x_bdt, sample_rate=24000)
    cands.append(Candidate("encodec ResidualVectorQuantizer", "peer", run_encodec if enc else None, skip=reason,
                           check=_codes_check(lambda out: out.codes[:, 0].T)))

    def stage_matmuls():
        for q in range(Q):
            torch.mm(x, codebooks[q].T)
    cands.append(Candidate("floor: stage matmuls r @ C.T", "floor", stage_matmuls))
    return Case("rvq.forward", {"N": rows, "Q": Q, "K": K, "D": D}, cands)


def backward_case(device, rows) -> Case:
    x, codebooks = _inputs(device, rows, requires_grad=True)

    def train_step():
        out = residual_vq(x, codebooks)
        (out.quantized.square().mean() + out.commit_loss.sum()).backward()
        x.grad = None

    cands = [Candidate("reference", "reference", with_backend("reference", train_step))]
    cands += backend_candidates(FORWARD, device, x.dtype, (x, codebooks, Q), lambda b: with_backend(b, train_step))
    vqp, reason = _vqp_residual_vq(codebooks)

    def run_vqp():  # training mode: the only mode with gradients; it also updates its EMA codebooks
        quantized, _, commit = vqp(x[None])
        (quantized.square().mean() + commit.sum()).backward()
        x.grad = None
    if vqp is not None:
        vqp.train()
    cands.append(Candidate("vector-quantize-pytorch ResidualVQ (train)", "peer", run_vqp if vqp else None,
                           skip=reason))
    return Case("rvq.forward+backward", {"N": rows, "Q": Q, "K": K, "D": D}, cands)


def decode_case(device, rows) -> Case:
    x, codebooks = _inputs(device, rows)
    codes = residual_vq(x, codebooks).codes

    def check(output, reference):
        return "identical" if torch.equal(output, reference) else f"max diff {(output - reference).abs().max():.2e}"
    cands = [Candidate("reference", "reference", with_backend("reference", lambda: rvq_decode(codes, codebooks)))]
    cands += backend_candidates(DECODE, device, codebooks.dtype, (codes, codebooks),
                                 lambda b: with_backend(b, lambda: rvq_decode(codes, codebooks)), check)
    cands.append(compiled("reference, torch.compile", lambda: rvq_decode(codes, codebooks), check=check))
    return Case("rvq.decode", {"N": rows, "Q": Q, "K": K, "D": D}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    rows = (QUICK_ROWS if quick else ROWS)[device.type]
    return [forward_case(device, rows), backward_case(device, rows), decode_case(device, rows)]
