"""The backend registry: explicit choice, environment override, automatic fallback, reasons."""
import importlib
import subprocess
import sys
import types
import warnings

import pytest
import torch

import pyaudiok
from pyaudiok.info import backend_table
from pyaudiok import dispatch
from pyaudiok.ops import residual_vq
from pyaudiok.ops.rvq import FORWARD


def _calls(op, monkeypatch):
    """Record which backend runs each call of `op`."""
    seen = []
    for name, impl in list(op.impls.items()):
        def traced(*args, _fn=impl.fn, _name=name):
            seen.append(_name)
            return _fn(*args)
        monkeypatch.setitem(op.impls, name, dispatch.Implementation(**{**impl.__dict__, "fn": traced}))
    return seen


def _inputs():
    return torch.randn(5, 4), torch.randn(2, 3, 4)


def test_automatic_choice_prefers_the_compiled_cpu_kernel(monkeypatch):
    seen = _calls(FORWARD, monkeypatch)
    residual_vq(*_inputs())
    expected = "cpu" if FORWARD.impls["cpu"].why_not(torch.device("cpu"), torch.float32) is None else "reference"
    assert seen == [expected]


def test_use_backend_context_nests_and_restores(monkeypatch):
    seen = _calls(FORWARD, monkeypatch)
    with pyaudiok.use_backend("reference"):
        residual_vq(*_inputs())
        with pyaudiok.use_backend("auto"):
            residual_vq(*_inputs())
        residual_vq(*_inputs())
    assert seen[0] == seen[2] == "reference"
    assert seen[1] == FORWARD.select(torch.device("cpu"), torch.float32).backend
    assert dispatch.requested_backend() is None


def test_environment_variable_forces_a_backend(monkeypatch):
    seen = _calls(FORWARD, monkeypatch)
    monkeypatch.setenv("PYAUDIOK_BACKEND", "reference")
    residual_vq(*_inputs())
    assert seen == ["reference"]
    monkeypatch.setenv("PYAUDIOK_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="PYAUDIOK_BACKEND"):
        residual_vq(*_inputs())


def test_context_overrides_environment(monkeypatch):
    automatic = FORWARD.select(torch.device("cpu"), torch.float32).backend
    seen = _calls(FORWARD, monkeypatch)
    monkeypatch.setenv("PYAUDIOK_BACKEND", "reference")
    with pyaudiok.use_backend("auto"):
        residual_vq(*_inputs())
    assert seen == [automatic]


def test_explicit_unavailable_backend_raises_with_reason():
    with pyaudiok.use_backend("cuda"):
        with pytest.raises(pyaudiok.BackendUnavailableError, match="'cuda'.*runs on cuda tensors, not cpu"):
            residual_vq(*_inputs())
    with pyaudiok.use_backend("cpu"):  # the cpu kernels are float32 only
        with pytest.raises(pyaudiok.BackendUnavailableError, match="float64"):
            residual_vq(*(t.double() for t in _inputs()))


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend"):
        with pyaudiok.use_backend("gpu"):
            pass


def test_an_op_can_set_its_own_automatic_order(monkeypatch):
    op = dispatch.Op("toy")
    for name in ("reference", "cpu"):
        op.register(name, lambda x, _name=name: _name, devices=("cpu",), dtypes=(torch.float32,))
    x = torch.zeros(1)
    assert op.order("cpu") == dispatch.PREFERENCE["cpu"]
    assert op(x, device=x.device, dtype=x.dtype) == "cpu"
    op.prefer("cpu", ("reference", "cpu"))
    assert op.order("cpu") == ("reference", "cpu") and op.order("cuda") == dispatch.PREFERENCE["cuda"]
    assert op(x, device=x.device, dtype=x.dtype) == "reference"
    with pyaudiok.use_backend("cpu"):  # an explicit request still wins
        assert op(x, device=x.device, dtype=x.dtype) == "cpu"
    with pytest.raises(ValueError, match="unknown backend"):
        op.prefer("cpu", ("gpu",))


def test_a_call_runs_with_its_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device: a call with inputs on another GPU runs inside a
    device switch to theirs, and a call on the current device (or the CPU) without one."""
    entered = []

    class Switch:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Switch)
    op = dispatch.Op("toy")
    op.register("reference", lambda x: list(entered), devices=("cpu", "cuda"), dtypes=(torch.float32,))
    x = torch.zeros(1)
    assert op(x, device=torch.device("cuda", 1), dtype=x.dtype) == [torch.device("cuda", 1)]
    assert entered == [torch.device("cuda", 1), "exit"]
    entered.clear()
    assert op(x, device=torch.device("cuda", 0), dtype=x.dtype) == []
    assert op(x, device=x.device, dtype=x.dtype) == [] and not entered


def test_auto_skip_passes_a_backend_over_silently_for_some_inputs(monkeypatch):
    """A measured rule (another backend is faster for these inputs) steers the automatic choice
    without a fallback warning; an explicit request still runs the backend."""
    monkeypatch.setattr(dispatch, "_warned", set())
    op = dispatch.Op("toy")
    op.register("reference", lambda x: "reference", devices=("cpu",), dtypes=(torch.float32,))
    op.register("cpu", lambda x: "cpu", devices=("cpu",), dtypes=(torch.float32,),
                auto_skip=lambda x: "the reference is faster below 4 elements" if x.numel() < 4 else None)
    small, large = torch.zeros(2), torch.zeros(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert op(small, device=small.device, dtype=small.dtype) == "reference"
        assert op(large, device=large.device, dtype=large.dtype) == "cpu"
        with pyaudiok.use_backend("cpu"):
            assert op(small, device=small.device, dtype=small.dtype) == "cpu"
    assert not [w for w in caught if issubclass(w.category, pyaudiok.BackendFallbackWarning)]


def test_contrastive_loss_gpu_rule_follows_the_measurements():
    from pyaudiok.ops.bilinear_contrastive import TRITON_AUTO_MIN_BATCH, reference_faster_on_gpu
    assert reference_faster_on_gpu(TRITON_AUTO_MIN_BATCH, torch.float32, tf32=False) is None
    assert "below" in reference_faster_on_gpu(TRITON_AUTO_MIN_BATCH - 1, torch.float32, tf32=False)
    assert "TF32" in reference_faster_on_gpu(2 * TRITON_AUTO_MIN_BATCH, torch.float32, tf32=True)
    assert reference_faster_on_gpu(1024, torch.bfloat16, tf32=True) is None  # not measured: the kernels


def test_distance_and_reordering_gpu_rules_follow_the_measurements():
    distance_logsumexp = importlib.import_module("pyaudiok.ops.distance_logsumexp")
    reorder_channels = importlib.import_module("pyaudiok.ops.reorder_channels")
    bound = distance_logsumexp.GPU_REFERENCE_MAX_PROBABILITIES
    assert "reference is faster" in distance_logsumexp.reference_faster_on_gpu(32_000, 1_000, torch.float32)
    assert distance_logsumexp.reference_faster_on_gpu(bound // 1000 + 1, 1000, torch.float32) is None  # memory
    assert distance_logsumexp.reference_faster_on_gpu(16, 16, torch.bfloat16) is None  # not measured: the kernels
    assert "reference" in reorder_channels.reference_faster_on_gpu(torch.float32)
    assert reorder_channels.reference_faster_on_gpu(torch.float16) is None


def test_group_norm_film_prelu_takes_the_reference_on_a_gpu():
    group_norm_film_prelu = importlib.import_module("pyaudiok.ops.group_norm_film_prelu")
    x, prelu = torch.randn(2, 4, 9), torch.rand(1)
    args = (x, 1, prelu, None, None, None, None, 1e-5)
    assert group_norm_film_prelu._gpu_auto_skip(*args) is None  # off a GPU the rule says nothing
    on_a_gpu = types.SimpleNamespace(device=torch.device("cuda"))  # the rule reads only x's device
    assert "reference is faster" in group_norm_film_prelu._gpu_auto_skip(on_a_gpu, *args[1:])
    if torch.cuda.is_available():
        on_gpu = (x.cuda(), 1, prelu.cuda(), None, None, None, None, 1e-5)
        assert group_norm_film_prelu.OP.select(on_gpu[0].device, x.dtype, on_gpu).backend == "reference"


@pytest.mark.gpu
def test_distance_and_reordering_take_the_reference_on_a_gpu_in_float32():
    distance_logsumexp = importlib.import_module("pyaudiok.ops.distance_logsumexp")
    reorder_channels = importlib.import_module("pyaudiok.ops.reorder_channels")
    h, table, alpha = torch.randn(100, 8, device="cuda"), torch.randn(5, 8, device="cuda"), torch.tensor(1.0)
    assert distance_logsumexp.OP.select(h.device, h.dtype, (h, table, alpha)).backend == "reference"
    assert distance_logsumexp.OP.select(h.device, torch.float16, (h.half(), table.half(), alpha)).backend == "triton"
    logits, x = torch.randn(2, 4, 4, device="cuda"), torch.randn(2, 4, 16, device="cuda")
    assert reorder_channels.OP.select(x.device, x.dtype, (logits, x, None)).backend == "reference"


def test_contrastive_loss_cpu_rule_follows_the_measurements():
    from pyaudiok.ops.bilinear_contrastive import CPU_AUTO_MIN_BATCH, OP, reference_faster_on_cpu
    assert reference_faster_on_cpu(CPU_AUTO_MIN_BATCH, torch.float32) is None
    assert "below" in reference_faster_on_cpu(CPU_AUTO_MIN_BATCH - 1, torch.float32)
    assert reference_faster_on_cpu(8, torch.float64) is None  # not measured: the kernels
    if OP.impls["cpu"].why_not(torch.device("cpu"), torch.float32) is not None:
        pytest.skip("the cpu backend is not available here")
    for batch, backend in ((256, "reference"), (CPU_AUTO_MIN_BATCH, "cpu")):
        a = torch.randn(batch, 4)
        assert OP.select(torch.device("cpu"), torch.float32, (a, a, torch.eye(4), False, "mean")).backend == backend
    with pyaudiok.use_backend("cpu"):  # a request still gets the kernels
        assert OP.select(torch.device("cpu"), torch.float32, (a[:8], a[:8], torch.eye(4), False, "mean")).backend \
            == "cpu"


def test_automatic_fallback_warns_once_and_uses_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())
    seen = _calls(FORWARD, monkeypatch)
    x, c = (t.double() for t in _inputs())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        residual_vq(x, c)
        residual_vq(x, c)
    assert seen == ["reference", "reference"]
    fallbacks = [w for w in caught if issubclass(w.category, pyaudiok.BackendFallbackWarning)]
    if FORWARD.impls["cpu"].availability(torch.device("cpu")) is None:
        assert len(fallbacks) == 1 and "float64" in str(fallbacks[0].message)


def test_info_lists_every_op_and_backend_with_reasons():
    text = pyaudiok.info()
    assert pyaudiok.__version__ in text and torch.__version__ in text
    rows = backend_table()
    for op in ("residual_vq", "rvq_decode"):
        assert {r["backend"] for r in rows if r["op"] == op} == set(dispatch.BACKENDS)
    for r in rows:
        assert r["available"] == (r["reason"] == ""), r  # every "no" says why
        assert f"{r['op']}" in text and r["reason"] in text and r["note"] in text
    notes = [r["note"] for r in rows if r["op"] == "bilinear_contrastive_loss" and r["backend"] == "triton"
             and r["available"]]
    assert all(n.startswith("automatic choice passes it over: float32 on a GPU") for n in notes), notes


def test_python_m_pyaudiok_info_runs():
    out = subprocess.run([sys.executable, "-m", "pyaudiok", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "residual_vq" in out.stdout and "rvq_decode" in out.stdout


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backends_compute_in_the_inputs_dtype_under_autocast(backend):
    """Autocast does not recast the torch ops inside a backend (the dtype of the inputs chose it):
    fourier_crop's matmul route, whose GEMMs are torch's, gives the float32 result bit for bit."""
    from pyaudiok.ops import fourier_crop
    x, strides = torch.randn(2, 3, 16, 20), torch.tensor([1.5])
    with pyaudiok.use_backend(backend):
        want = fourier_crop(x, strides, method="matmul")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fourier_crop(x, strides, method="matmul")
    assert got.dtype == torch.float32 and torch.equal(got, want)


# Forward-mode AD and torch.func.grad: the fused backends' gradients are reverse-mode torch.library
# rules, so only the reference may run under them (its plain torch ops have every derivative).
def _transform_ops():
    from pyaudiok import ops
    prelu = torch.full((1,), 0.2, dtype=torch.float64)
    others = torch.randn(2, 3, 40, dtype=torch.float64)
    return {"group_norm_film_prelu": (lambda x: ops.group_norm_film_prelu(x, 2, prelu), (2, 4, 9)),
            "si_sdr_matrix": (lambda x: ops.si_sdr_matrix(x, others), (2, 3, 40))}


def _jvp_by_forward_ad(fn, x, t):
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        return fwAD.unpack_dual(fn(fwAD.make_dual(x, t))).tangent


TRANSFORMS = {
    "func.jvp": lambda fn, x, t: torch.func.jvp(fn, (x,), (t,))[1],
    "forward_ad": _jvp_by_forward_ad,
    "func.grad": lambda fn, x, t: torch.func.grad(lambda a: (fn(a) * t[..., :1, :1]).sum())(x),
    "jvp of vmap": lambda fn, x, t: torch.func.jvp(torch.func.vmap(fn), (x[None].expand(2, *x.shape),),
                                                   (t[None].expand(2, *t.shape),))[1],
}


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", ("group_norm_film_prelu", "si_sdr_matrix"))
def test_derivative_transforms_run_the_reference(name, transform):
    fn, shape = _transform_ops()[name]
    x, t = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    with pyaudiok.use_backend("reference"):
        expected = TRANSFORMS[transform](fn, x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dispatch.BackendFallbackWarning)
        got = TRANSFORMS[transform](fn, x, t)  # the automatic choice: the fused cpu backend elsewhere
    assert got is not None and got.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    with pyaudiok.use_backend("cpu"), pytest.raises(dispatch.BackendUnavailableError,
                                                     match=rf"{name}: backend 'cpu' .* the reference backend"):
        TRANSFORMS[transform](fn, x, t)


def test_vmap_alone_keeps_the_fused_backend():
    fn, shape = _transform_ops()["group_norm_film_prelu"]
    x = torch.randn(3, *shape, dtype=torch.float64)
    with pyaudiok.use_backend("cpu"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note that it loops over the batch
        got = torch.func.vmap(fn)(x)
    with pyaudiok.use_backend("reference"):
        torch.testing.assert_close(got, torch.stack([fn(item) for item in x]))
