"""Batched k-means on device (DESIGN §9: Wavesplit's inference-time speaker centroids).

    kmeans(x[B, P, d], k, *, n_iters=20, init="kmeans++", generator=None) -> KMeansResult(centroids[B, k, d],
                                                                                        assignments[B, P])

Initialisation (shared by every backend, on the tensors' device, no host round trip): k-means++
(each next centre drawn with probability ∝ squared distance to the nearest chosen one) or
"random" (k distinct points), or an explicit `init` tensor [B, k, d]. Every item draws with the
same random variates (k of them per call, whatever B), so an item's centres depend on its own
points and the generator's state only, not on the other items of the batch or its place among
them. Then `n_iters` Lloyd
iterations: assign each point to its nearest centroid (ties → lowest index), move each centroid to
the mean of its points; a centroid with no points stays where it is. The returned assignments are
those of the final centroids. Distances are computed in float32 (float64 for float64 input).
Fast backends stop sweeping an item once an iteration leaves all its assignments unchanged (Lloyd
has reached its fixed point, so the result is unchanged; scikit-learn stops the same way).

Backends run the Lloyd iterations: `reference` (explicit ‖x − c‖² on [B, P, k, d]), `cpu` (float32:
csrc/cpu/kmeans.cpp, one sweep per iteration with RVQ's register-blocked nearest-row search and
float64 cluster sums; other dtypes: the GEMM expansion ‖x‖² − 2 x·c + ‖c‖², one batched matmul
per iteration), `triton`
(kernels/kmeans.py: one launch per iteration, assignment with the centroids streamed through
registers and the sums accumulated atomically; settled items are masked out on the device).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import dispatch
from . import _checks
from ._library import accumulation_dtype, cpp_op, extension_loaded, register_backends, triton_op

__all__ = ["KMeansResult", "kmeans", "kmeans_plus_plus", "lloyd_reference"]


class KMeansResult(NamedTuple):
    centroids: torch.Tensor    # [B, k, d]
    assignments: torch.Tensor  # [B, P] int64


def _update(x: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Means of the points of each cluster; empty clusters keep their centroid. The sums are one
    batched matmul of the one-hot assignments with the points (a scatter-add is several times
    slower on CPUs)."""
    members = torch.nn.functional.one_hot(assignments, centroids.shape[1]).to(x.dtype).transpose(1, 2)  # [B, k, P]
    sums = torch.bmm(members, x)
    counts = members.sum(-1, keepdim=True)
    return torch.where(counts > 0, sums / counts.clamp_min(1), centroids)


# ----------------------------------------------------------------------------------------------
# Reference and the GEMM backend: Lloyd iterations.

def _lloyd(x: torch.Tensor, centroids: torch.Tensor, n_iters: int, distances, stop_when_stable: bool = False):
    """Lloyd iterations with `distances(x, c) -> [B, P, k]`; final centroids and assignments.

    `stop_when_stable` ends the loop once an iteration changes no assignment in any item: the
    update would then rebuild the same centroids, so the result is that of all n_iters iterations
    (one host sync per iteration, which the CPU route can afford)."""
    x, c = x.to(accumulation_dtype(x.dtype)), centroids.to(accumulation_dtype(x.dtype))
    previous = None
    for i in range(n_iters + 1):
        assignments = distances(x, c).argmin(-1)
        if i == n_iters or (stop_when_stable and previous is not None and torch.equal(assignments, previous)):
            break
        c, previous = _update(x, assignments, c), assignments
    return c.to(centroids.dtype), assignments


def lloyd_reference(x: torch.Tensor, centroids: torch.Tensor, n_iters: int):
    return _lloyd(x, centroids, n_iters, lambda x, c: (x[:, :, None, :] - c[:, None, :, :]).pow(2).sum(-1))


def _gemm_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """‖x‖² − 2 x·c + ‖c‖² by one batched matmul."""
    return torch.baddbmm(x.square().sum(-1, keepdim=True) + c.square().sum(-1)[:, None, :], x, c.transpose(1, 2),
                         alpha=-2)


def _lloyd_gemm(x: torch.Tensor, centroids: torch.Tensor, n_iters: int):
    return _lloyd(x, centroids, n_iters, _gemm_distances, stop_when_stable=True)


def _lloyd_triton(x: torch.Tensor, centroids: torch.Tensor, n_iters: int):
    return triton_op("kmeans_lloyd_triton", "kmeans", "lloyd", _register_fake)(x.contiguous(), centroids.contiguous(),
                                                                               n_iters)


def _register_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(x, centroids, n_iters):
        return centroids.new_empty(centroids.shape), x.new_empty(x.shape[:2], dtype=torch.int64)


def _triton_constraint(x, centroids, n_iters):
    """The Triton kernel adds the cluster sums with atomics, in no fixed order: not under
    torch.use_deterministic_algorithms(True), where the reference (torch's deterministic index_add_)
    runs instead, and a forced `triton` says why, as torch's own non-deterministic ops do."""
    from pyaudiok.kernels.kmeans import MAX_D
    if torch.are_deterministic_algorithms_enabled():
        return "its cluster sums are added with atomics (not deterministic), and deterministic algorithms are on"
    return None if x.shape[-1] <= MAX_D else f"d = {x.shape[-1]} exceeds the Triton kernel's limit of {MAX_D}"


if extension_loaded():
    _register_fake("pyaudiok::kmeans_lloyd")


def _lloyd_cpu(x: torch.Tensor, centroids: torch.Tensor, n_iters: int):
    """The C++ kernel for float32 (csrc/cpu/kmeans.cpp); other dtypes, or a build without the
    extension, take the batched-GEMM route."""
    if x.dtype == torch.float32 and extension_loaded():
        return cpp_op("kmeans_lloyd")(x, centroids, n_iters)
    return _lloyd_gemm(x, centroids, n_iters)


LLOYD = dispatch.op("kmeans")
register_backends(LLOYD, reference=lloyd_reference, triton=_lloyd_triton, triton_constraint=_triton_constraint)
# Registered as always available: without the extension the cpu backend still has the GEMM route.
LLOYD.register("cpu", _lloyd_cpu, devices=("cpu",), dtypes=dispatch.FLOAT_DTYPES)


# ----------------------------------------------------------------------------------------------
# Initialisation.

def _inverse_cdf_pick(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of weights[B, P] (>= 0, positive sum), the index drawn by the uniform variate u (one
    scalar for all rows): the first index whose cumulative weight exceeds u·total, so a point of
    zero weight is never picked. Cumulated in float64: the pick moves only when u·total falls
    within rounding of a boundary. Squared distances that overflowed their dtype (points beyond
    ~1e19 in float32) count as the largest finite value, alike."""
    largest = torch.finfo(weights.dtype).max
    cdf = weights.to(torch.float64).nan_to_num(posinf=largest).cumsum(-1)
    total = cdf[:, -1:].contiguous()  # searchsorted copies (and warns about) a strided value tensor
    pick = torch.searchsorted(cdf, u * total, right=True)
    # u·total rounding up to the total would pass the last point of positive weight: clamp to it.
    return torch.minimum(pick, torch.searchsorted(cdf, total))[:, 0]


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ centres [B, k, d] of x[B, P, d], drawn on x's device. The k uniform variates are
    drawn once and shared by every item (inverse-CDF sampling): an item's centres do not depend on
    the rest of the batch."""
    B, P, d = x.shape
    xa = x.to(accumulation_dtype(x.dtype))
    u = torch.rand(k, device=x.device, dtype=torch.float64, generator=generator)
    rows = torch.arange(B, device=x.device)
    first = (u[0] * P).long().clamp_max(P - 1).expand(B)
    centres = [xa[rows, first]]
    nearest = (xa - centres[0][:, None]).square().sum(-1)  # [B, P]
    for j in range(1, k):
        # All points coincide with chosen centres (weights all zero): draw uniformly instead.
        weights = torch.where(nearest.sum(-1, keepdim=True) > 0, nearest, torch.ones_like(nearest))
        pick = _inverse_cdf_pick(weights, u[j])
        centres.append(xa[rows, pick])
        nearest = torch.minimum(nearest, (xa - centres[-1][:, None]).square().sum(-1))
    return torch.stack(centres, 1).to(x.dtype)


def _random_init(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k distinct points per item; the same indices for every item (one draw of P keys per call)."""
    picks = torch.rand(x.shape[1], device=x.device, generator=generator).argsort()[:k]
    return x[:, picks]


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_finite(name: str, value: torch.Tensor) -> None:
    """A NaN or inf point has no defined clustering: the reference's distances to it are NaN, so
    it joins cluster 0 and makes that centroid NaN, which then takes every point of its item, and
    k-means++ cannot draw from NaN weights. Rejected instead (one device sync on a GPU)."""
    _checks.values_hold(torch.isfinite(value), f"{name} must be finite (no NaN or inf)",
                        lambda: f"{int((~torch.isfinite(value)).sum())} NaN or inf of {value.numel()} values")


def kmeans(x: torch.Tensor, k: int, *, n_iters: int = 20, init: str | torch.Tensor = "kmeans++",
           generator: torch.Generator | None = None) -> KMeansResult:
    """Cluster each item of x[B, P, d] into k clusters (see the module docstring). The result
    carries no gradient. x and a given `init` must be finite."""
    x = _checks.float_tensor("x", x, ndim=3, layout="[B, P, d]")
    # The fused backends register no autograd: an input requiring a gradient would get one through
    # the initial centres only (autograd's fallback), silently wrong. No backend differentiates.
    x = x.detach()
    B, P, d = x.shape
    if P == 0:
        raise ValueError("x must hold at least one point per item (P >= 1)")
    k = _checks.int_in_range("k", k, 1, P)
    n_iters = _checks.int_in_range("n_iters", n_iters, 0, 1_000_000)
    _check_finite("x", x)
    if isinstance(init, torch.Tensor):
        centroids = _checks.float_tensor("init", init, ndim=3, layout="[B, k, d]")
        if tuple(centroids.shape) != (B, k, d):
            raise ValueError(f"init must have shape [B, k, d] = [{B}, {k}, {d}]; got "
                             f"{_checks.shape_str(centroids.shape)}")
        _checks.same_dtype("init", centroids, "x", x)
        _checks.same_device("init", centroids, "x", x)
        centroids = centroids.detach()
        _check_finite("init", centroids)
    elif init == "kmeans++":
        centroids = kmeans_plus_plus(x, k, generator) if B else x.new_empty(0, k, d)
    elif init == "random":
        centroids = _random_init(x, k, generator)
    else:
        raise ValueError(f"init must be 'kmeans++', 'random' or a tensor [B, k, d]; got {init!r}")
    if B == 0:
        return KMeansResult(centroids, torch.zeros(0, P, dtype=torch.int64, device=x.device))
    centroids, assignments = LLOYD(x, centroids, n_iters, device=x.device, dtype=x.dtype)
    return KMeansResult(centroids, assignments)
