"""Benchmarks of Perceiver AR at the trainer's default size (context 8192, 256 latents, width 128,
2 heads of 64, 3 latent layers, cross-attend dropout 0.5) against `perceiver-ar-pytorch`'s model of
equal size (same widths, depth, heads, latents and dropout):
- one training step (forward, loss, backward, the trainer's fused Adam for both), batch 4, in
  float32 and under bf16 autocast (`pyaudiok train perceiver-ar --precision bf16`), both models, and
  ours with its forward compiled (`--compile`; full runs only);
- sampling: a full-context prompt continued by greedy decoding, batch 1, with the latent KV cache
  (`generate`; on GPUs also with each window's step replayed as a CUDA graph), without it (the
  full model per token: the definition the cached tokens must equal), and the peer's
  `AutoregressiveWrapper.generate` (its model run on the last 8192 tokens per token, top-k sampling:
  the time per token is what is compared)."""
from __future__ import annotations

import torch

import pyaudiok
from pyaudiok.models import PerceiverAR, PerceiverARConfig
from pyaudiok.models.perceiver_ar.sampling import generate
from pyaudiok.train.perceiver_ar import make_optimizer
from pyaudiok.train.runtime import compile_model, precision_scope

from .harness import Candidate, Case, first_compile_alone
from .peers import load

SIZES = {"cpu": dict(max_context=8192, latents=256, width=128, heads=2, layers=3, batch=4),
         "cuda": dict(max_context=8192, latents=1024, width=768, heads=12, layers=12, batch=4)}
# Tokens generated: within the first window (a full run, then cached steps); fewer on GPUs, where the
# uncached sampler and the peer rerun a 12-layer model per token.
GENERATE_TOKENS = {"cpu": 64, "cuda": 16}
QUICK = {"cpu": dict(max_context=2048, latents=128, width=128, heads=2, layers=2, batch=2),
         "cuda": dict(max_context=4096, latents=512, width=256, heads=4, layers=4, batch=4)}


def _model(size, device) -> PerceiverAR:
    torch.manual_seed(0)
    config = PerceiverARConfig(vocab_size=256, max_context=size["max_context"], latents=size["latents"],
                               width=size["width"], heads=size["heads"], layers=size["layers"], cross_dropout=0.5)
    return PerceiverAR(config).to(device)


def _ours(size, device, backend, precision="fp32", compiled=False):
    model = compile_model(_model(size, device), compiled)
    opt = make_optimizer(model, 3e-4)
    seq = torch.randint(0, 256, (size["batch"], size["max_context"] + 1), device=device)

    def step():
        with pyaudiok.use_backend(backend), precision_scope(device, precision):
            loss, _ = model.loss(seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return first_compile_alone(step) if compiled else step


def _peer_model(module, size, device):
    torch.manual_seed(0)
    M, N = size["max_context"], size["latents"]
    return module.PerceiverAR(num_tokens=256, dim=size["width"], depth=size["layers"], max_seq_len=M,
                              cross_attn_seq_len=M - N, dim_head=size["width"] // size["heads"],
                              heads=size["heads"], cross_attn_dropout=0.5).to(device)


def _peer(size, device, precision="fp32"):
    module, reason = load("perceiver_ar_pytorch", "perceiver-ar-pytorch")
    if module is None:
        return None, reason
    M = size["max_context"]
    model = _peer_model(module, size, device)
    opt = make_optimizer(model, 3e-4)  # the same optimiser: the models are compared
    seq = torch.randint(1, 256, (size["batch"], M + 1), device=device)

    def step():
        with precision_scope(device, precision):
            loss = model(seq[:, :-1], labels=seq[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, None


def _tokens_identical(out, ref) -> str:
    return "tokens identical" if torch.equal(out, ref) else "tokens differ"


def generate_case(size, device, tokens: int) -> Case:
    model = _model(size, device)
    prompt = torch.randint(0, 256, (1, size["max_context"]), generator=torch.Generator().manual_seed(1)).to(device)

    def ours(use_cache, cuda_graphs=False):
        return lambda: generate(model, prompt, tokens, temperature=0, use_cache=use_cache, cuda_graphs=cuda_graphs)
    cands = [Candidate("generate, no cache (full model per token)", "reference", ours(False)),
             Candidate("generate, latent KV cache", "backend", ours(True), check=_tokens_identical),
             Candidate("generate, latent KV cache, CUDA graphs", "backend", ours(True, True), check=_tokens_identical,
                       skip=None if device.type == "cuda" else "CUDA graphs: GPUs only")]
    module, reason = load("perceiver_ar_pytorch", "perceiver-ar-pytorch")
    sampler, sampler_reason = load("perceiver_ar_pytorch.autoregressive_wrapper", "perceiver-ar-pytorch")
    reason = reason or sampler_reason
    peer = None
    if reason is None:
        wrapper = sampler.AutoregressiveWrapper(_peer_model(module, size, device))
        peer = lambda: wrapper.generate(prompt, tokens)  # noqa: E731
    cands.append(Candidate("perceiver-ar-pytorch AutoregressiveWrapper.generate", "peer", peer, skip=reason))
    params = {k: size[k] for k in ("max_context", "latents", "width", "heads", "layers")}
    return Case("perceiver_ar.generate", {**params, "prompt": size["max_context"], "tokens": tokens}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    size = (QUICK if quick else SIZES)[device.type]
    fused = "cpu" if device.type == "cpu" else "triton"
    peer, reason = _peer(size, device)
    peer_bf16, _ = _peer(size, device, "bf16")
    cands = [Candidate("reference attention", "reference", _ours(size, device, "reference")),
             Candidate(f"PerceiverAR ({fused} attention)", "backend", _ours(size, device, fused)),
             Candidate(f"PerceiverAR ({fused} attention), bf16 autocast", "backend",
                       _ours(size, device, fused, "bf16")),
             Candidate(f"PerceiverAR ({fused} attention), torch.compile", "backend",
                       _ours(size, device, fused, compiled=True), compiles=True),
             Candidate("perceiver-ar-pytorch PerceiverAR", "peer", peer, skip=reason),
             Candidate("perceiver-ar-pytorch PerceiverAR, bf16 autocast", "peer", peer_bf16, skip=reason)]
    return [Case("perceiver_ar.train_step", dict(size), cands),
            generate_case(size, device, tokens=8 if quick else GENERATE_TOKENS[device.type])]
