"""A byte-level text corpus built from the Python standard library's sources (present on every
machine with Python, no download): the `.py` files under `sysconfig`'s stdlib path in sorted
order (site-packages excluded), joined by newlines. The last `valid_fraction` of the bytes is the
validation split. Training windows are drawn at random offsets that depend only on (seed, step,
rank), so a resumed run reads exactly the data an uninterrupted one would have."""
from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import torch

__all__ = ["stdlib_bytes", "ByteCorpus"]


def stdlib_bytes(max_bytes: int | None = None) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    corpus = b"\n".join(chunks)
    return corpus[:max_bytes] if max_bytes is not None else corpus


class ByteCorpus:
    def __init__(self, data: bytes, valid_fraction: float = 0.05):
        if not 0 <= valid_fraction < 1:
            raise ValueError(f"valid_fraction must lie in [0, 1); got {valid_fraction}")
        # frombuffer rejects empty data
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
        cut = int(len(tokens) * (1 - valid_fraction))
        self.train, self.valid = tokens[:cut], tokens[cut:]

    @classmethod
    def stdlib(cls, max_bytes: int | None = None, valid_fraction: float = 0.05) -> "ByteCorpus":
        return cls(stdlib_bytes(max_bytes), valid_fraction)

    def unigram_entropy(self, split: str = "train") -> float:
        """Bits per byte of the split's byte frequencies: what a context-free model achieves."""
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid'; got {split!r}")
        counts = torch.bincount(getattr(self, split).long(), minlength=256).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log2()).sum())

    def batch(self, length: int, batch_size: int, seed: int, step: int, rank: int = 0) -> torch.Tensor:
        """[batch_size, length] int64 training windows at random offsets of (seed, step, rank)."""
        if length < 1 or batch_size < 0:
            raise ValueError(f"length must be >= 1 and batch_size >= 0; got length={length}, batch_size={batch_size}")
        if len(self.train) < length:
            raise ValueError(f"the training split has {len(self.train)} bytes, fewer than a window of {length}")
        gen = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + rank) % 2**63)
        starts = torch.randint(0, len(self.train) - length + 1, (batch_size,), generator=gen)
        return self.train[starts[:, None] + torch.arange(length)].long()

    def valid_windows(self, length: int, count: int) -> torch.Tensor:
        """[count, length] evenly spaced validation windows (the same every time)."""
        if len(self.valid) < length:
            raise ValueError(f"the validation split has {len(self.valid)} bytes, fewer than a window of {length}")
        if length < 1 or count < 0:
            raise ValueError(f"length must be >= 1 and count >= 0; got length={length}, count={count}")
        starts = torch.linspace(0, len(self.valid) - length, count).long()
        return self.valid[starts[:, None] + torch.arange(length)].long()


def bits(nats: float) -> float:
    return nats / math.log(2)
