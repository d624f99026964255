"""The trainers' `--precision bf16`: each trainer's tiny run goes through the CLI with its training
steps under bf16 autocast on the run's device (every autocast region entered is recorded),
finishes with finite losses, and an unknown precision is refused by the argument parser."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from pyaudiok import cli
from pyaudiok.train import leaf

from .test_charm_train import TOY as CHARM
from .test_cola_train import _tiny_run as cola_argv
from .test_diffstride_train import _tiny_argv as diffstride_argv
from .test_dive_train import TINY as DIVE
from .test_leaf_trainer import _tiny_argv as leaf_argv
from .test_perceiver_ar_train import TOY as PERCEIVER_AR
from .test_permutation_train import _tiny_run as permutation_argv
from .test_wavesplit_train import TINY as WAVESPLIT

pytestmark = pytest.mark.usefixtures("one_thread")

SOUNDSTREAM = ["--preset", "tiny", "--steps", "3", "--batch-size", "2", "--segment-seconds", "0.25",
               "--discriminator-start", "1", "--log-every", "1", "--eval-every", "10000", "--eval-examples", "2",
               "--audio-samples", "1", "--threads", "1", "--no-progress", "--real-speech", "no"]
LLP = ["train", "llp", "--bag-sizes", "8", "--methods", "proportion,ot", "--epochs", "1", "--batch", "64",
       "--hidden", "16", "--ot-iters", "10", "--no-progress"]

# name -> (main, argv for an output directory)
TRAINERS = {
    "charm": (cli.main, lambda out: ["train", "charm", *CHARM, "--steps", "2", "--out", str(out)]),
    "cola": (cli.main, lambda out: cola_argv(out)[:2] + ["--steps", "3"] + cola_argv(out)[4:]),
    "diffstride": (cli.main, lambda out: diffstride_argv(out, "poor_init")),
    "dive": (cli.main, lambda out: DIVE + ["--out", str(out)]),
    "leaf": (leaf.main, lambda out: leaf_argv(out, "--frontends", "leaf")),
    "llp": (cli.main, lambda out: LLP + ["--out", str(out)]),
    "perceiver_ar": (cli.main, lambda out: ["train", "perceiver-ar", *PERCEIVER_AR, "--steps", "2", "--out", str(out)]),
    "permutation": (cli.main, lambda out: permutation_argv(out)),
    "soundstream": (cli.main, lambda out: ["train", "soundstream", *SOUNDSTREAM, "--out", str(out)]),
    "wavesplit": (cli.main, lambda out: WAVESPLIT + ["--out", str(out)]),
}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", list(TRAINERS))
def test_bf16_training_steps_run_under_autocast(name, device, tmp_path, monkeypatch):
    main, run_argv = TRAINERS[name]

    def argv(out):
        return run_argv(out) + ["--device", device]
    regions = []
    real_autocast = torch.autocast

    def recording_autocast(device_type, dtype=None, enabled=True, **kw):
        regions.append((device_type, dtype, enabled))
        return real_autocast(device_type, dtype=dtype, enabled=enabled, **kw)
    monkeypatch.setattr(torch, "autocast", recording_autocast)
    assert main(argv(tmp_path) + ["--precision", "bf16"]) == 0
    assert (device, torch.bfloat16, True) in regions
    for path in tmp_path.rglob("*.csv"):  # every logged loss finite
        for line in path.read_text().splitlines()[1:]:
            assert all(math.isfinite(float(v)) for v in line.split(",") if _is_number(v)), (path, line)
    with pytest.raises(SystemExit), contextlib.redirect_stderr(None):
        main(argv(tmp_path / "refused") + ["--precision", "fp8"])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
