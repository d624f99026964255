"""The trainers' `--compile`: each trainer's tiny run goes through the CLI with its model's methods
compiled (runtime.compile_model). Tracing runs on dynamo's eager backend here (code generation is
slow on this CPU, and tests/test_compile.py covers it), so what is checked is that every trainer
hands its model to torch.compile, that the traced model trains (finite logged losses), and that
the state it saves is that of the plain model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyaudiok.train.runtime import compile_model

from .test_precision import TRAINERS, _is_number

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def traced_on_eager_backend(monkeypatch):
    """torch.compile with dynamo's eager backend; returns the functions it was given."""
    compiled = []
    real_compile = torch.compile

    def compile_eagerly(fn, **kwargs):
        compiled.append(fn)
        return real_compile(fn, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    yield compiled
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainer_compiles_its_model(name, tmp_path, traced_on_eager_backend):
    main, argv = TRAINERS[name]
    assert main(argv(tmp_path) + ["--device", "cpu", "--compile"]) == 0
    names = {getattr(fn, "__name__", "") for fn in traced_on_eager_backend}
    assert "forward" in names, f"{name}: the model's forward was not compiled ({names})"
    for path in tmp_path.rglob("*.csv"):  # every logged loss finite
        for line in path.read_text().splitlines()[1:]:
            assert all(math.isfinite(float(v)) for v in line.split(",") if _is_number(v)), (path, line)


def test_compile_model_compiles_in_place_and_keeps_the_state_dict(traced_on_eager_backend):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3)
    expected = model(x)
    assert compile_model(model, True) is model
    assert torch.allclose(model(x), expected)
    assert [fn.__name__ for fn in traced_on_eager_backend] == ["forward"]
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert compile_model(nn.Linear(2, 2), False).forward.__func__ is nn.Linear.forward
