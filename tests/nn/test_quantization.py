"""ResidualVQ: codebook learning (EMA, k-means init, dead codes), quantizer dropout, eval
behaviour, codes, bitrate arithmetic, gradients, state and argument checks — each on data where
the right answer is known."""
from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist

from pyaudiok.nn import quantization
from pyaudiok.nn.quantization import ResidualVQ, kmeans


def make(dim: int, num_quantizers: int, codebook_size: int, **kwargs) -> ResidualVQ:
    """A quantizer whose codebook learning is fully controlled by the test unless asked for."""
    options = dict(kmeans_init=False, dead_code_threshold=0.0, quantizer_dropout=False)
    options.update(kwargs)
    return ResidualVQ(dim, num_quantizers, codebook_size, **options)


def set_state(module: ResidualVQ, codebooks, ema_count=None, ema_sum=None) -> None:
    with torch.no_grad():
        module.codebooks.copy_(torch.as_tensor(codebooks))
        if ema_count is not None:
            module.ema_count.copy_(torch.as_tensor(ema_count))
        if ema_sum is not None:
            module.ema_sum.copy_(torch.as_tensor(ema_sum))


def buffers(module: ResidualVQ) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.named_buffers()}


def nearest(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Brute-force nearest codeword (the test's own oracle)."""
    return torch.cdist(rows.double(), codebook.double()).argmin(-1)


def stage_residuals(rows: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
    """r_0 = x, r_q = r_{q-1} − C_q[codes_q], for rows[N, D] and codes[N, n]."""
    out = [rows]
    for q in range(codes.shape[-1]):
        out.append(out[-1] - codebooks[q][codes[:, q]])
    return out


# ----------------------------------------------------------------------------------------------
# EMA update.

CODEBOOKS = [[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]],
             [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]
EMA_COUNT = [[4.0, 1.0, 2.0], [3.0, 3.0, 0.5]]
EMA_SUM = [[[0.4, -0.4], [9.0, 1.0], [0.2, 19.0]],
           [[0.3, 0.3], [2.5, 0.5], [0.1, 0.6]]]
X = [[[10.9, 0.1], [0.2, 9.8], [0.1, 0.2], [10.1, 1.2], [9.9, 0.05], [0.3, 10.9]],
     [[0.9, 0.1], [10.2, 10.3], [-0.1, 9.0], [10.0, 0.0], [0.05, 0.95], [0.7, 0.8]]]


def expected_ema(x, codebooks, count, total, n_q, decay, eps):
    """Direct, vector-by-vector computation of one EMA step of every stage."""
    K = codebooks.shape[1]
    count, total, updated = count.clone(), total.clone(), codebooks.clone()
    for q in range(codebooks.shape[0]):
        hits, sums, used = torch.zeros(K, dtype=x.dtype), torch.zeros(K, 2, dtype=x.dtype), False
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                if q >= n_q[b]:
                    continue
                r = x[b, t].clone()
                for p in range(q):  # the residual stage q saw, from the codebooks before the step
                    r = r - codebooks[p][nearest(r[None], codebooks[p])[0]]
                k = nearest(r[None], codebooks[q])[0]
                hits[k] += 1
                sums[k] += r
                used = True
        if not used:  # no vector reached this stage: nothing to learn
            continue
        count[q] = decay * count[q] + (1 - decay) * hits
        total[q] = decay * total[q] + (1 - decay) * sums
        n = (count[q] + eps) / (count[q].sum() + K * eps) * count[q].sum()
        updated[q] = total[q] / n[:, None]
    return updated, count, total


@pytest.mark.parametrize("n_q", [None, [2, 1], [1, 1]], ids=["all-stages", "per-example", "stage2-unused"])
def test_ema_update_matches_direct_computation(n_q):
    decay, eps = 0.9, 1e-3
    module = make(2, 2, 3, decay=decay, eps=eps).double().train()
    set_state(module, CODEBOOKS, EMA_COUNT, EMA_SUM)
    before = buffers(module)
    x = torch.tensor(X, dtype=torch.float64)
    per_example = None if n_q is None else torch.tensor(n_q)
    out = module(x, per_example)

    want = expected_ema(x, before["codebooks"], before["ema_count"], before["ema_sum"],
                        n_q or [2, 2], decay, eps)
    for name, value in zip(("codebooks", "ema_count", "ema_sum"), want):
        torch.testing.assert_close(getattr(module, name), value, rtol=1e-12, atol=1e-12, msg=name)
    if n_q == [1, 1]:  # a stage no example used keeps its state bit for bit
        assert torch.equal(module.codebooks[1], before["codebooks"][1])
    # The codes of this step were found with the codebooks from before the update.
    rows = x.reshape(-1, 2)
    assert torch.equal(out.codes.reshape(-1, 2)[:, 0], nearest(rows, before["codebooks"][0]))


def test_ema_leaves_stages_past_a_fixed_n_q_untouched():
    module = make(4, 3, 8).train()
    before = buffers(module)
    module(torch.randn(2, 16, 4), n_q=2)
    for name in ("codebooks", "ema_count", "ema_sum"):
        assert torch.equal(getattr(module, name)[2], before[name][2]), name
        assert not torch.equal(getattr(module, name)[0], before[name][0]), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dead_code_threshold", [0.0, 2.0])
def test_a_non_finite_batch_leaves_the_codebooks_as_they_were(bad, dead_code_threshold):
    """An fp16 overflow or a diverging encoder: the batch's step learns nothing (no NaN in the
    codebooks for good), and the next finite batch learns as usual."""
    module = make(4, 3, 8, kmeans_init=True, dead_code_threshold=dead_code_threshold).train()
    module(torch.randn(2, 16, 4))  # k-means init and a first update
    before = buffers(module)
    x = torch.randn(2, 16, 4)
    x[1, 5, 2] = bad
    module(x)
    for name, value in before.items():
        assert torch.equal(getattr(module, name), value), name
    module(torch.randn(2, 16, 4))
    assert torch.isfinite(module.codebooks).all() and not torch.equal(module.codebooks, before["codebooks"])


def test_kmeans_init_waits_for_a_finite_batch():
    module = make(4, 2, 8, kmeans_init=True).train()
    x = torch.randn(2, 16, 4)
    x[0, 0, 0] = float("nan")
    module(x)
    assert not bool(module.initialized) and torch.isfinite(module.codebooks).all()
    module(torch.randn(2, 16, 4))
    assert bool(module.initialized) and torch.isfinite(module.codebooks).all()


# ----------------------------------------------------------------------------------------------
# k-means initialisation.

def test_kmeans_init_recovers_well_separated_clusters():
    centers = torch.tensor([[10.0, 10.0, 0.0], [-10.0, 10.0, 5.0], [10.0, -10.0, -5.0], [-10.0, -10.0, 0.0]])
    sigma = 0.05
    points = (centers[:, None, :] + sigma * torch.randn(4, 128, 3)).reshape(-1, 3)
    x = points[torch.randperm(points.shape[0])].reshape(8, 64, 3)
    # 64 codewords for 4 clusters: the sampled seeds miss a cluster with probability ~1e-8.
    module = make(3, 1, 64, kmeans_init=True).train()
    assert not module.initialized
    module(x)
    assert module.initialized
    codebook = module.codebooks[0]
    alive = module.ema_count[0] > 0
    assert (torch.cdist(centers, codebook[alive]).min(-1).values < 2 * sigma).all(), "a cluster was missed"
    assert (torch.cdist(codebook[alive], centers).min(-1).values < 6 * sigma).all(), "a codeword between clusters"
    error = (points - codebook[alive][nearest(points, codebook[alive])]).pow(2).sum(-1).mean()
    assert error < 3 * sigma**2  # the noise level: every cluster is represented by its own codewords


def assert_lloyd_fixed_point(rows, assignment, codebook, counts):
    """Each codeword with members is the mean of the rows assigned to it (by the codes this
    codebook produced), and its EMA count their number; returns the rows' residuals."""
    sizes = torch.bincount(assignment, minlength=codebook.shape[0])
    sums = torch.zeros_like(codebook).index_add_(0, assignment, rows)
    alive = sizes > 0
    torch.testing.assert_close(codebook[alive], sums[alive] / sizes[alive, None], atol=1e-4, rtol=0)
    torch.testing.assert_close(counts, sizes.to(counts.dtype), atol=1e-4, rtol=0)
    return rows - codebook[assignment]


def test_kmeans_init_fits_each_stage_on_the_previous_residuals():
    # Repeated distinct points: Lloyd's iterations reach their fixed point exactly, well within 50.
    distinct = torch.randn(12, 4) * torch.tensor([8.0, 8.0, 1.0, 1.0])
    rows = distinct.repeat_interleave(torch.arange(10, 22), dim=0)
    x = rows[torch.randperm(rows.shape[0])].reshape(6, -1, 4)
    module = make(4, 2, 8, kmeans_init=True, kmeans_iters=50).train()
    # The codes of the first step come from the fresh k-means codebooks (the EMA update follows).
    codes = module(x).codes.reshape(-1, 2)
    residual = assert_lloyd_fixed_point(rows := x.reshape(-1, 4), codes[:, 0], module.codebooks[0],
                                        module.ema_count[0])
    assert_lloyd_fixed_point(residual, codes[:, 1], module.codebooks[1], module.ema_count[1])
    assert not torch.allclose(residual, rows)


def test_kmeans_function_empty_clusters_keep_their_centroid():
    # Two identical seeds of which the second always loses the tie: it never gets a member.
    vectors = torch.tensor([[0.0, 0.0]] * 3 + [[4.0, 0.0]] * 3)
    torch.manual_seed(0)
    centroids, assignment = kmeans(vectors, 8, 10)  # more clusters than rows: seeds repeat
    counts = torch.bincount(assignment, minlength=8)
    assert counts.sum() == 6
    for k in range(8):  # every centroid, empty or not, is one of the two data points
        assert min((centroids[k] - v).abs().max() for v in vectors) == 0


def test_initialized_model_is_not_refit():
    module = make(2, 1, 4, kmeans_init=True).train()
    module(torch.randn(1, 32, 2))
    assert module.initialized
    with torch.no_grad():
        module.codebooks.fill_(7.0)
    module.eval()  # eval: nothing learned, and no second k-means
    module(torch.randn(1, 32, 2))
    assert (module.codebooks == 7.0).all()


# ----------------------------------------------------------------------------------------------
# Dead-code replacement.

DEAD_CODEBOOKS = [[[1.0, 1.0], [5.0, 5.0], [100.0, 100.0], [-100.0, 100.0]],
                  [[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]]]
# With decay 0.5 and 4 hits on each of codes 0 and 1 of stage 1 and 8 (or 4) on code 0 of stage 2:
# stage 1 → [7, 7, 1.5, 0.5] (codes 2, 3 dead); stage 2 → [.., 5, 1.5, 2.0] (only code 2 dead:
# a count equal to the threshold is alive).
DEAD_COUNTS = [[10.0, 10.0, 3.0, 1.0], [10.0, 10.0, 3.0, 4.0]]


def dead_code_setup(threshold: float) -> tuple[ResidualVQ, torch.Tensor]:
    module = make(2, 2, 4, decay=0.5, dead_code_threshold=threshold).train()
    sums = torch.tensor(DEAD_CODEBOOKS) * torch.tensor(DEAD_COUNTS)[..., None]
    set_state(module, DEAD_CODEBOOKS, DEAD_COUNTS, sums)
    noise = 0.1 * torch.rand(2, 4, 2)
    x = noise + torch.tensor([[1.0, 1.0], [5.0, 5.0]])[:, None, :]  # example 0 near code 0, 1 near code 1
    return module, x


def is_row_of(vector: torch.Tensor, rows: torch.Tensor) -> bool:
    return bool((rows == vector).all(-1).any())


@pytest.mark.parametrize("dense", [False, True], ids=["dead-only", "dense"])
@pytest.mark.parametrize("n_q", [None, [2, 1]], ids=["all-stages", "per-example"])
def test_dead_codes_replaced_by_batch_residuals(n_q, dense, monkeypatch):
    """Both routes: gathering only the dead codes' candidates (CPU, one process) and the sync-free
    dense one (GPU, DDP)."""
    if dense:
        monkeypatch.setattr(quantization, "_dead_codes_readable", lambda device: False)
    per_example = None if n_q is None else torch.tensor(n_q)
    module, x = dead_code_setup(threshold=2.0)
    twin, _ = dead_code_setup(threshold=0.0)  # same step without replacement
    before = buffers(module)
    out = module(x, per_example)
    twin(x, per_example)

    rows = x.reshape(-1, 2)
    residuals = stage_residuals(rows, before["codebooks"], out.codes.reshape(-1, 2))
    # Stage 2 may only draw from the vectors of examples that used it.
    stage2_rows = residuals[1] if n_q is None else residuals[1][:4]
    dead = {0: [2, 3], 1: [2]}
    for q, candidates in ((0, residuals[0]), (1, stage2_rows)):
        for k in range(4):
            if k in dead[q]:
                vector = module.codebooks[q, k]
                assert is_row_of(vector, candidates), (q, k)
                assert module.ema_count[q, k] == 2.0
                torch.testing.assert_close(module.ema_sum[q, k], 2.0 * vector)
            else:  # alive codes: exactly the plain EMA update
                for name in ("codebooks", "ema_count", "ema_sum"):
                    assert torch.equal(getattr(module, name)[q, k], getattr(twin, name)[q, k]), (name, q, k)


def test_dead_code_draws_are_random_residuals():
    draws = set()
    for _ in range(20):
        module, x = dead_code_setup(threshold=2.0)
        module(x)
        draws.add(tuple(module.codebooks[0, 2].tolist()))
    assert len(draws) > 1


# ----------------------------------------------------------------------------------------------
# Quantizer dropout.

def test_dropout_draws_cover_one_to_num_quantizers():
    module = make(4, 6, 8, quantizer_dropout=True)
    draws = module.sample_num_quantizers(5000)
    assert draws.dtype == torch.int64 and draws.shape == (5000,)
    assert set(draws.tolist()) == set(range(1, 7))  # every value, both extremes included


def test_dropout_masks_stages_per_example(monkeypatch):
    Q = 4
    module = make(3, Q, 16, quantizer_dropout=True).double().train()
    codebooks = module.codebooks.clone()
    draws = torch.tensor([1, Q, 2])
    monkeypatch.setattr(module, "sample_num_quantizers", lambda batch, device=None: draws)
    x = torch.randn(3, 10, 3, dtype=torch.float64)
    out = module(x)

    assert out.codes.shape == (3, 10, Q)  # all stages run; each example uses its prefix
    first = codebooks[0][out.codes[0, :, 0]]
    assert torch.equal(out.quantized[0], first)  # n_q = 1: exactly stage 1's codeword
    for b in range(3):
        want = sum(codebooks[q][out.codes[b, :, q]] for q in range(int(draws[b])))
        torch.testing.assert_close(out.quantized[b], want, rtol=0, atol=1e-12)
    # The commitment loss counts each example's used stages only.
    loss = 0.0
    for b in range(3):
        residuals = stage_residuals(x[b], codebooks, out.codes[b])
        loss = loss + sum(r.pow(2).sum() for r in residuals[1:int(draws[b]) + 1])
    torch.testing.assert_close(out.commit_loss, loss / x.numel(), rtol=1e-12, atol=0)


def test_dropout_only_in_training_without_explicit_n_q(monkeypatch):
    module = make(3, 3, 8, quantizer_dropout=True)
    calls = []
    original = module.sample_num_quantizers
    monkeypatch.setattr(module, "sample_num_quantizers", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 5, 3)
    module.eval()(x)
    module.train()(x, n_q=2)
    assert not calls
    module.train()(x)
    assert len(calls) == 1


def test_per_example_all_stages_equals_uniform_path():
    module = make(3, 3, 8).double().eval()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    uniform, masked = module(x), module(x, torch.tensor([3, 3]))
    assert torch.equal(uniform.codes, masked.codes)
    torch.testing.assert_close(masked.quantized, uniform.quantized, rtol=0, atol=1e-12)
    torch.testing.assert_close(masked.commit_loss, uniform.commit_loss, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------
# Eval mode, codes.

def trained(dim: int = 4, Q: int = 3, K: int = 16) -> ResidualVQ:
    module = ResidualVQ(dim, Q, K, kmeans_iters=5)
    module.train()(torch.randn(4, 32, dim))
    return module.eval()


def test_eval_is_deterministic_and_never_changes_buffers():
    module = trained()
    before = buffers(module)
    x = torch.randn(2, 20, 4)
    a, b = module(x), module(x)
    for name, value in before.items():
        assert torch.equal(getattr(module, name), value), name
    assert torch.equal(a.quantized, b.quantized) and torch.equal(a.codes, b.codes)
    assert a.codes.shape == (2, 20, 3)
    torch.testing.assert_close(a.quantized, module.decode(a.codes))
    two = module(x, n_q=2)
    assert two.codes.shape == (2, 20, 2)
    assert torch.equal(two.codes, a.codes[..., :2])  # greedy: a prefix of the full codes
    torch.testing.assert_close(two.quantized, module.decode(a.codes[..., :2]))


@pytest.mark.parametrize("n_q", [None, 1, 2])
def test_encode_decode_round_trip_equals_quantized(n_q):
    module = trained()
    x = torch.randn(3, 11, 4)
    codes = module.encode(x, n_q)
    out = module(x, n_q)
    assert codes.dtype == torch.int64 and torch.equal(codes, out.codes)
    torch.testing.assert_close(module.decode(codes), out.quantized, rtol=0, atol=1e-6)


def test_output_keeps_input_dtype():
    module = trained()
    out = module(torch.randn(2, 5, 4, dtype=torch.bfloat16))
    assert out.quantized.dtype == torch.bfloat16 and out.codes.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_module_keeps_its_ema_statistics_in_float32(dtype):
    """`.to(half)` casts the codebooks but not the EMA sums. Every vector counts once a stage whatever
    code it takes, so each stage's total EMA count follows the float32 module's to float32 rounding (in
    half precision it would drift by its rounding every step), and the codebooks stay their sums over
    their smoothed counts."""
    torch.manual_seed(0)
    full = make(4, 2, 8, kmeans_init=False)
    half = copy.deepcopy(full).to(dtype)
    assert half.codebooks.dtype == dtype and half.ema_count.dtype == half.ema_sum.dtype == torch.float32
    for _ in range(30):
        x = torch.randn(2, 32, 4)
        full.train()(x)
        half.train()(x.to(dtype))
    assert half.codebooks.dtype == dtype and half.ema_sum.dtype == torch.float32
    torch.testing.assert_close(half.ema_count.sum(-1), full.ema_count.sum(-1), rtol=1e-6, atol=0)
    smoothed = (half.ema_count + half.eps) / (half.ema_count.sum(-1, keepdim=True) + 8 * half.eps) \
        * half.ema_count.sum(-1, keepdim=True)
    torch.testing.assert_close(half.codebooks.float(), (half.ema_sum / smoothed[..., None]).to(dtype).float())
    assert half.float().ema_sum.dtype == torch.float32 and half.double().ema_sum.dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# Bitrate.

def test_bitrate_arithmetic():
    module = make(8, 32, 1024)
    assert module.bits_per_frame(8) == 80
    assert module.bitrate(8, 75) == 6000
    assert module.num_quantizers_for_bitrate(6000, 75) == 8
    assert module.num_quantizers_for_bitrate(5999, 75) == 7
    assert module.num_quantizers_for_bitrate(750, 75) == 1
    assert module.num_quantizers_for_bitrate(3 * 10 * 75.0, 75.0) == 3
    assert module.num_quantizers_for_bitrate(24000, 50) == 32  # capped at the stages there are
    assert module.num_quantizers_for_bitrate(6000, 24000 / 320) == 8
    for n_q in range(1, 33):
        assert module.num_quantizers_for_bitrate(module.bitrate(n_q, 75), 75) == n_q
    assert make(2, 4, 256).bitrate(4, 50) == 1600


@pytest.mark.parametrize("bitrate", [749, 0, -6000, float("nan")])
def test_bitrate_below_one_quantizer_rejected(bitrate):
    with pytest.raises(ValueError, match="bitrate"):
        make(8, 8, 1024).num_quantizers_for_bitrate(bitrate, 75)


def test_bitrate_bad_frame_rate_and_n_q():
    module = make(8, 8, 1024)
    with pytest.raises(ValueError, match="frame_rate"):
        module.bitrate(2, 0)
    with pytest.raises(ValueError, match="n_q"):
        module.bits_per_frame(9)


# ----------------------------------------------------------------------------------------------
# Gradients.

@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("n_q", [None, 2, [1, 3]], ids=["all", "fixed", "per-example"])
def test_gradients_flow_to_x(training, n_q):
    module = make(3, 3, 8, kmeans_init=True, kmeans_iters=3, dead_code_threshold=2.0).double()
    module.train()(torch.randn(2, 9, 3, dtype=torch.float64))  # initialise
    module.train(training)
    codebooks = module.codebooks.clone()  # the values this step quantizes with
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 9, 3, dtype=torch.float64)
    out = module(x, torch.tensor(n_q) if isinstance(n_q, list) else n_q)
    ((out.quantized * weight).sum() + out.commit_loss).backward()

    used = n_q if isinstance(n_q, list) else [n_q or 3] * 2
    want = weight.clone()  # straight-through
    for b in range(2):
        residuals = stage_residuals(x[b].detach(), codebooks, out.codes[b])
        want[b] += 2 * sum(residuals[1:used[b] + 1]) / x.numel()  # d commit / dx
    torch.testing.assert_close(x.grad, want, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# State.

def test_state_dict_round_trip():
    module = ResidualVQ(4, 3, 16, kmeans_iters=5).train()
    for _ in range(3):
        module(torch.randn(2, 24, 4))
    state = module.state_dict()
    assert set(state) == {"codebooks", "ema_count", "ema_sum", "initialized"}
    copy = ResidualVQ(4, 3, 16, kmeans_iters=5)
    assert not copy.initialized
    copy.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(getattr(copy, name), value), name
    x = torch.randn(2, 10, 4)
    assert torch.equal(copy.eval()(x).quantized, module.eval()(x).quantized)
    copy.train()(x)  # loaded as initialized: learning continues, no new k-means
    assert copy.initialized


# ----------------------------------------------------------------------------------------------
# Distributed.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_single_process_matches_local(monkeypatch):
    x = torch.randn(2, 40, 4)

    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(1234)
        module = ResidualVQ(4, 2, 8, kmeans_iters=5)
        module.train()(x)
        module(x)
        return buffers(module)

    local = run()
    calls = {"all_reduce": 0, "broadcast": 0}
    for name in calls:
        original = getattr(dist, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(dist, name, spy)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        distributed = run()
    finally:
        dist.destroy_process_group()
    assert calls["all_reduce"] >= 2 * 2  # counts and sums, every step
    assert calls["broadcast"] >= 3 + 2  # the k-means init, and dead-code candidates every step
    for name, value in local.items():
        assert torch.equal(distributed[name], value), name


# ----------------------------------------------------------------------------------------------
# Argument checks.

@pytest.mark.parametrize("kwargs,error,name", [
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=2.0), TypeError, "dim"),
    (dict(num_quantizers=0), ValueError, "num_quantizers"),
    (dict(codebook_size=0), ValueError, "codebook_size"),
    (dict(codebook_size=True), TypeError, "codebook_size"),
    (dict(decay=1.0), ValueError, "decay"),
    (dict(decay=0.0), ValueError, "decay"),
    (dict(decay="0.9"), TypeError, "decay"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(kmeans_iters=-1), ValueError, "kmeans_iters"),
    (dict(dead_code_threshold=-1.0), ValueError, "dead_code_threshold"),
])
def test_bad_constructor_arguments(kwargs, error, name):
    args = dict(dim=4, num_quantizers=2, codebook_size=8)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        ResidualVQ(**args)


@pytest.mark.parametrize("x,n_q,error,name", [
    ([[[0.0] * 4]], None, TypeError, "x"),
    (torch.zeros(2, 4), None, ValueError, "x"),
    (torch.zeros(1, 2, 3, 4), None, ValueError, "x"),
    (torch.zeros(1, 2, 5), None, ValueError, "x"),
    (torch.zeros(1, 2, 4, dtype=torch.int64), None, TypeError, "x"),
    (torch.zeros(1, 2, 4), 0, ValueError, "n_q"),
    (torch.zeros(1, 2, 4), 3, ValueError, "n_q"),
    (torch.zeros(1, 2, 4), 1.0, TypeError, "n_q"),
    (torch.zeros(1, 2, 4), True, TypeError, "n_q"),
    (torch.zeros(1, 2, 4), torch.tensor([1, 2]), ValueError, "n_q"),
    (torch.zeros(1, 2, 4), torch.tensor([3]), ValueError, "n_q"),
    (torch.zeros(1, 2, 4), torch.tensor([1.0]), TypeError, "n_q"),
])
def test_bad_inputs(x, n_q, error, name):
    module = make(4, 2, 8)
    with pytest.raises(error, match=name):
        module(x, n_q)
    if not isinstance(n_q, torch.Tensor):
        with pytest.raises(error, match=name):
            module.encode(x, n_q)


def test_empty_batch_is_a_no_op():
    module = ResidualVQ(4, 2, 8).train()
    before = buffers(module)
    out = module(torch.zeros(0, 5, 4))
    assert out.quantized.shape == (0, 5, 4) and out.codes.shape == (0, 5, 2)
    for name, value in before.items():
        assert torch.equal(getattr(module, name), value), name
