"""torch.compile over the public ops and the models.

Every op traces into one graph (fullgraph=True) and matches eager mode, forward and backward, except
the two whose output sizes are data (they split the graph where they read them). Every model traces
without a graph break except where it reads data on purpose (DiffStride's output sizes, DIVE's
host-side speaker walk), and its compiled loss and gradients match eager mode. The dispatcher's
choice is part of the trace: `use_backend` around a compiled call re-dispatches it, and value
checks stay checks (an assertion in the graph) instead of splitting it.

Correctness runs on AOT autograd's eager backend (dynamo, fake tensors, functionalization and the
autograd graph, without code generation, which is slow here); one case goes through inductor."""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

import pyaudiok
import pyaudiok.ops as ops
from pyaudiok.nn.quantization import ResidualVQ

from .harness import assert_close, run_with_grads
from .models.test_autocast import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_matches_eager(name: str, fn, compiled_fn, inputs, backend: str = "auto") -> None:
    """compiled_fn(*inputs) against fn(*inputs), both on `backend` (default: the automatic choice): every
    output (float ones within float32's tolerance, the rest identical) and every input gradient."""
    expected, expected_grads = run_with_grads(fn, inputs, backend, grad_seed=7)
    out, grads = run_with_grads(compiled_fn, inputs, backend, grad_seed=7)
    assert len(out) == len(expected) and len(grads) == len(expected_grads)
    for i, (o, e) in enumerate(zip(out, expected)):
        if o.is_floating_point():
            assert_close(f"{name} output {i}", o, e, torch.float32)
        else:
            assert torch.equal(o, e), f"{name} output {i} differs"
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert (g is None) == (e is None), f"{name} gradient {i}: compiled None={g is None}, eager None={e is None}"
        if g is not None:
            assert_close(f"{name} gradient {i}", g, e, torch.float32)


def _op_cases(device):
    """name -> (fn, inputs): small inputs of every public op, odd sizes."""
    def t(*shape, grad=True, fn=torch.randn):
        return fn(*shape, device=device).requires_grad_(grad)
    bags, props = (torch.tensor([0, 0, 0, 1, 1, 1, 1], device=device),
                   torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], device=device))
    params = [(torch.rand(5, device=device) * 0.5 + 0.1).requires_grad_() for _ in range(4)]
    activity = (torch.rand(2, 2, 17, device=device) > 0.5).float()
    order = torch.tensor([[1, -1, 0], [0, 1, -1]], device=device)
    references = t(2, 3, 101, grad=False)  # and estimates ~80 dB from them: pairs SI-SDR recomputes (data)
    near_perfect = ((references + 1e-4 * t(2, 3, 101, grad=False)).requires_grad_(), references.requires_grad_())
    return {
        "latent_cross_attention": (lambda q, k, v, n: ops.latent_cross_attention(q, k, v, key_lengths=n),
                                   (t(2, 2, 5, 16), t(2, 2, 11, 16), t(2, 2, 11, 16),
                                    torch.tensor([11, 7], device=device))),
        "residual_vq": (lambda x, c: ops.residual_vq(x, c).quantized, (t(7, 6), t(3, 9, 6, grad=False))),
        "rvq_decode": (lambda c, b: ops.rvq_decode(c, b), (torch.randint(0, 9, (5, 3), device=device), t(3, 9, 6))),
        "si_sdr_matrix": (ops.si_sdr_matrix, (t(2, 3, 101), t(2, 3, 101, grad=False))),
        "pit_si_sdr": (lambda e, r: ops.pit_si_sdr(e, r)[0], (t(2, 3, 101), t(2, 3, 101, grad=False))),
        "si_sdr_matrix, near-perfect pairs": (ops.si_sdr_matrix, near_perfect),
        "neg_si_sdr_loss": (ops.neg_si_sdr_loss, (t(2, 3, 101), t(2, 3, 101, grad=False))),
        "fourier_crop": (ops.fourier_crop, (t(2, 3, 33), torch.tensor([1.7], device=device, requires_grad=True))),
        "soft_rank": (ops.soft_rank, (t(4, 9),)),
        "soft_sort": (ops.soft_sort, (t(4, 9),)),
        "sinkhorn": (lambda c: ops.sinkhorn(c, eps=0.1, n_iters=30), (t(2, 6, 7, fn=torch.rand),)),
        "sinkhorn_rank": (ops.sinkhorn_rank, (t(3, 6),)),
        "sinkhorn_sort": (ops.sinkhorn_sort, (t(3, 6),)),
        "log_sinkhorn_normalize": (ops.log_sinkhorn_normalize, (t(2, 5, 5),)),
        "bilinear_contrastive_loss": (ops.bilinear_contrastive_loss, (t(9, 7), t(9, 7), t(7, 7))),
        "pcen": (ops.pcen, (t(2, 5, 31, fn=torch.rand), *params)),
        "group_norm_film_prelu": (lambda x, a, w, s: ops.group_norm_film_prelu(x, 2, a, weight=w, bias=None, scale=s,
                                                                                shift=s * 0.5, eps=1e-5),
                                  (t(3, 6, 13), t(6, fn=torch.rand), t(6), t(3, 6))),
        "gabor_pool": (lambda x, f, b, w: ops.gabor_pool(x, f, b, w, window=33, stride=8),
                       (t(2, 301), torch.tensor([0.05, 0.2, 0.31], device=device), t(3, fn=torch.rand) + 0.5,
                        t(3, fn=torch.rand) + 0.5)),
        "proportion_loss": (lambda x: ops.proportion_loss(x, bags, props), (t(7, 3),)),
        "ot_pseudo_labels": (lambda x: ops.ot_pseudo_labels(torch.log_softmax(x, -1), bags, props), (t(7, 3),)),
        "kmeans": (lambda x: ops.kmeans(x, 3, init=x[:, :3]).centroids, (t(2, 20, 3, grad=False),)),
        "collar_vad_loss": (lambda x: ops.collar_vad_loss(x, activity, order, collar_frames=1.5), (t(2, 3, 17),)),
        "distance_nll": (lambda v, w: ops.distance_nll(v, w, torch.tensor([[1], [0], [2], [1], [0]], device=device),
                                                       alpha=0.7), (t(5, 4), t(3, 4))),
    }


# Ops whose output sizes are data: the graph splits where they read it (and nowhere else).
SIZES_FROM_DATA = {"fourier_crop": "the output size follows the stride values",
                   "ot_pseudo_labels": "the packed bags' size follows bag_index"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", list(_op_cases("cpu")))
def test_op_compiles_and_matches_eager(name, device):
    fn, inputs = _op_cases(device)[name]
    torch.manual_seed(0)
    fullgraph = name not in SIZES_FROM_DATA
    assert_matches_eager(name, fn, torch.compile(fn, backend="aot_eager", fullgraph=fullgraph), inputs)
    if not fullgraph:  # the op runs as it is, outside the graph
        torch._dynamo.reset()
        with pytest.raises(Exception, match="skipped"):
            torch.compile(fn, backend="aot_eager", fullgraph=True)(*inputs)


@pytest.mark.parametrize("name", list(_op_cases("cpu")))
def test_op_compiles_on_its_cpu_backend(name):
    """The same on the cpu backend forced (the automatic choice runs the reference for some of these
    small inputs): the fused kernels' fake and autograd registrations traced, not just checked by opcheck."""
    fn, inputs = _op_cases("cpu")[name]
    torch.manual_seed(0)
    try:
        run_with_grads(fn, inputs, "cpu", grad_seed=7)
    except pyaudiok.dispatch.BackendUnavailableError as error:
        pytest.skip(f"no cpu backend: {error}")
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=name not in SIZES_FROM_DATA)
    assert_matches_eager(name, fn, compiled, inputs, backend="cpu")


def test_op_under_inductor_matches_eager():
    """The whole stack once through inductor's code generation: the fused op between generated kernels."""
    fn = lambda q, k, v: ops.latent_cross_attention(q, k, v).square().sum(-1).tanh()  # noqa: E731
    inputs = [torch.randn(2, 2, 5, 16, requires_grad=True), torch.randn(2, 2, 9, 16, requires_grad=True),
              torch.randn(2, 2, 9, 16, requires_grad=True)]
    assert_matches_eager("latent attention", fn, torch.compile(fn, fullgraph=True), inputs)


def _graph_targets(fn, *args) -> list[str]:
    """The call targets of the graph(s) torch.compile captures for fn(*args)."""
    targets: list[str] = []

    def record(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward
    torch.compile(fn, backend=record, fullgraph=True)(*args)
    return targets


def test_use_backend_around_a_compiled_call_redispatches():
    """The requested backend is read while tracing and guarded on: changing it retraces the call."""
    q, k, v = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    compiled_targets: list[list[str]] = []

    def record(gm, example_inputs):
        compiled_targets.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward
    fn = torch.compile(lambda q, k, v: ops.latent_cross_attention(q, k, v), backend=record, fullgraph=True)
    with pyaudiok.use_backend("cpu"):
        fn(q, k, v)
    with pyaudiok.use_backend("reference"):
        fn(q, k, v)
    assert len(compiled_targets) == 2, "the second backend did not retrace"
    fused, reference = (any("pyaudiok" in target for target in targets) for targets in compiled_targets)
    assert fused and not reference


def test_value_checks_stay_in_the_graph():
    """A value check compiles to an assertion: bad values still fail, with the message."""
    fn = torch.compile(lambda codes, books: ops.rvq_decode(codes, books), backend="aot_eager", fullgraph=True)
    books = torch.randn(2, 4, 3)
    fn(torch.tensor([[0, 3]]), books)
    with pytest.raises(RuntimeError, match=r"codes must lie in \[0, K\) = \[0, 4\)"):
        fn(torch.tensor([[0, 4]]), books)
    targets = _graph_targets(lambda c: ops.rvq_decode(c, books), torch.tensor([[1, 2]]))
    assert any("_assert_async" in target for target in targets)


# Models: the reasons a graph may split, where a model reads data on purpose (fourier_crop is run
# outside the graph: ops._library.eager_under_compile).
MODEL_BREAKS = {"diffstride_2d": "function `disable`", "diffstride_1d": "function `disable`",
                "dive": "Data-dependent branching"}


def _loss_and_grads(model, loss_fn):
    torch.manual_seed(3)
    loss = loss_fn()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("name", list(MODELS))
def test_model_compiles_and_matches_eager(name):
    torch.manual_seed(0)
    model, loss_fn = MODELS[name]("cpu")
    loss_fn()  # first call: one-time work (e.g. the quantizer's k-means initialisation)
    twin = copy.deepcopy(model)
    explanation = torch._dynamo.explain(loss_fn)()
    allowed = MODEL_BREAKS.get(name)
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert all(allowed and allowed in r for r in reasons), f"unexpected graph breaks: {reasons}"
    torch._dynamo.reset()
    # The same state for both runs (the explained call above may have updated buffers).
    model.load_state_dict(twin.state_dict())
    expected_loss, expected_grads = _loss_and_grads(model, loss_fn)
    model.load_state_dict(twin.state_dict())
    compiled = torch.compile(loss_fn, backend="aot_eager")
    loss, grads = _loss_and_grads(model, compiled)
    assert_close("loss", loss, expected_loss, torch.float32)
    for (pname, _), g, e in zip(((n, p) for n, p in model.named_parameters() if p.requires_grad), grads,
                                expected_grads):
        assert_close(f"grad {pname}", g, e, torch.float32, scale=10.0)


def test_quantizer_rechecks_initialisation_after_loading_a_state_dict():
    """The host copy of `initialized` is forgotten when a state dict is loaded: a fresh (untrained)
    state dict makes the next training call initialise the codebooks again."""
    fresh = ResidualVQ(4, 2, 8, kmeans_iters=2)
    trained = copy.deepcopy(fresh).train()
    trained(torch.randn(1, 32, 4))
    assert bool(trained.initialized)
    trained.load_state_dict(fresh.state_dict())
    assert not bool(trained.initialized)
    trained(torch.randn(1, 32, 4))
    assert bool(trained.initialized)
