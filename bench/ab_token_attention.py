"""A/B of Perceiver AR's training step on the CPU with the cross-attention computed per vocabulary
entry (LatentAttention.attend_tokens, forward and backward) and over gathered keys and values,
alternated in one process at the bench's size: python -m pyaudiok.bench.ab_token_attention [--rounds N]."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyaudiok.nn.attention import LatentAttention

from .bench_perceiver_ar import SIZES, _ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cpu")
    step = _ours(dict(SIZES["cpu"]), device, "cpu")
    by_token = LatentAttention.attend_tokens
    variants = {"per vocabulary entry": by_token,
                "gathered keys and values": lambda self, *a: None}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 2):  # two warm-up rounds
        for name, method in variants.items():
            LatentAttention.attend_tokens = method
            start = time.perf_counter()
            step()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    LatentAttention.attend_tokens = by_token
    for name, ts in times.items():
        print(f"  {name:32s} median {1e3 * statistics.median(ts):8.2f} ms   min {1e3 * min(ts):8.2f} ms")


if __name__ == "__main__":
    main()
