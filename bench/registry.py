"""Every benchmark module, by name (`pyaudiok bench --only NAME`)."""
from __future__ import annotations

import torch

from . import (bench_bilinear_contrastive, bench_charm, bench_collar_vad, bench_der, bench_distance_logsumexp,
               bench_fourier_crop, bench_group_norm_film_prelu, bench_kmeans, bench_latent_attention, bench_leaf,
               bench_llp, bench_models, bench_perceiver_ar, bench_reorder_channels, bench_rotary, bench_rvq,
               bench_si_sdr, bench_sinkhorn, bench_soft_rank, bench_soundstream, bench_token_attention)

MODULES = {"rvq": bench_rvq, "soundstream": bench_soundstream, "der": bench_der, "si_sdr": bench_si_sdr,
           "kmeans": bench_kmeans, "latent_attention": bench_latent_attention, "perceiver_ar": bench_perceiver_ar,
           "fourier_crop": bench_fourier_crop, "soft_rank": bench_soft_rank, "sinkhorn": bench_sinkhorn,
           "bilinear_contrastive": bench_bilinear_contrastive, "leaf": bench_leaf, "charm": bench_charm,
           "llp": bench_llp, "models": bench_models, "rotary": bench_rotary, "collar_vad": bench_collar_vad,
           "reorder_channels": bench_reorder_channels, "distance_logsumexp": bench_distance_logsumexp,
           "token_attention": bench_token_attention, "group_norm_film_prelu": bench_group_norm_film_prelu}


def collect(device: torch.device, quick: bool, only: list[str] | None = None, compiled_peers: bool = True):
    names = only or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {', '.join(MODULES)}")
    for name in names:
        for case in MODULES[name].cases(device, quick):
            if quick or not compiled_peers:  # compiling a peer may take longer than a quick run
                why = "compiled only in full runs (not --quick)" if quick else "left out (--no-compile)"
                for cand in case.candidates:
                    if cand.compiles and cand.skip is None:
                        cand.run, cand.skip = None, why
            yield case
