"""What the command line refuses before a run starts, each with a one-line message and status 2:
options out of range, --resume with nothing to resume, a fresh run over another run's checkpoints,
damaged or foreign checkpoints, an absent CUDA device; and every subcommand's --help."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from pyaudiok import cli
from pyaudiok.models.perceiver_ar import PerceiverARConfig
from pyaudiok.train.checkpoint import (CheckpointError, capture_rng_state, checkpoint_path, load_checkpoint,
                                       save_checkpoint)
from pyaudiok.train.runtime import ConfigError, check_options, pick_device

from .test_perceiver_ar_train import TOY as PERCEIVER_AR

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv: list[str]) -> tuple[int, str]:
    """cli.main(argv)'s status (argparse's exit status too) and its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as e:
            status = e.code
    return status, err.getvalue()


@pytest.mark.parametrize("command", [
    [], ["info"], ["bench"], ["train"], ["generate"], ["separate"], ["diarize"], ["codec"],
    *(["train", name] for name in sorted(cli.TRAINERS)), ["generate", "perceiver-ar"]])
def test_every_subcommand_has_help(command):
    status, _ = _run(command + ["--help"])
    assert status == 0


@pytest.mark.parametrize("command", ["separate", "diarize"])
def test_tools_take_their_options_before_the_input(command, tmp_path):
    argv = [command, "--checkpoint", str(tmp_path / "none"), "in.wav"] + (["out"] if command == "separate" else [])
    status, err = _run(argv)
    assert status == 2 and "does not exist" in err


@pytest.mark.parametrize("argv, words", [
    (["train", "perceiver-ar", "--steps", "-1"], "--steps must be >= 0"),
    (["train", "perceiver-ar", "--batch-size", "0"], "--batch-size must be > 0"),
    (["train", "perceiver-ar", "--lr", "0"], "--lr must be > 0"),
    (["train", "perceiver-ar", "--lr", "nan"], "--lr must be > 0"),
    (["train", "perceiver-ar", "--log-every", "0"], "--log-every must be > 0"),
    (["train", "perceiver-ar", "--latents", "300", "--context", "100"], "latents must be in"),
    (["train", "soundstream", "--checkpoint-every", "0"], "--checkpoint-every must be > 0"),
    (["train", "soundstream", "--model", "nonsense=3"], "unknown model setting"),
    (["train", "soundstream", "--eval-quantizers", "99"], "--eval-quantizers must be in"),
    (["train", "soundstream", "--betas", "1.5", "0.9"], "--betas must be"),
    (["train", "charm", "--p-drop", "2"], "--p-drop must be in [0, 1]"),
    (["train", "charm", "--n-classes", "9"], "n_classes must be in"),
    (["train", "dive", "--duration", "0"], "--duration must be > 0"),
    (["train", "dive", "--max-speakers", "0"], "max_speakers must be in"),
    (["train", "wavesplit", "--batch", "0"], "--batch must be > 0"),
    (["train", "permutation", "--log-every", "0"], "--log-every must be > 0"),
    (["train", "cola", "--widths", "a,b"], "--widths must be comma-separated integers"),
    (["train", "cola", "--steps", "0"], "--steps must be > 0"),
    (["train", "diffstride", "--steps", "0"], "--steps must be > 0"),
    (["train", "leaf", "--frontends", "bogus"], "unknown or no frontend"),
    (["train", "leaf", "--epochs", "0"], "--epochs must be > 0"),
    (["train", "llp", "--lr", "-1"], "--lr must be > 0"),
])
def test_options_out_of_range_are_refused_before_the_run(argv, words, tmp_path):
    status, err = _run(argv + ["--out", str(tmp_path / "run")])
    assert status == 2 and words in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_check_options_names_the_option():
    class Config:
        steps, lr, p = 3, float("nan"), 0.5
    check_options(Config(), positive=("steps",), probabilities=("p",))
    with pytest.raises(ConfigError, match="--lr must be > 0; got nan"):
        check_options(Config(), positive=("steps", "lr"))


def _par(out, *extra) -> list[str]:
    return ["train", "perceiver-ar", *PERCEIVER_AR, "--steps", "2", "--out", str(out), *extra]


def test_resume_without_a_checkpoint_says_so_and_a_fresh_run_needs_a_free_directory(tmp_path):
    status, err = _run(_par(tmp_path / "first", "--resume"))  # a restart script's first start
    assert status == 0 and "no checkpoint in" in err and "starting a fresh run" in err
    save_checkpoint(checkpoint_path(tmp_path / "old" / "checkpoints", 3000), {"step": 3000})
    status, err = _run(_par(tmp_path / "old"))
    assert status == 2 and "already holds the checkpoints of a run" in err and "--resume" in err
    assert sorted(p.name for p in (tmp_path / "old" / "checkpoints").iterdir()) == ["step_00003000.pt"]


def _damaged(directory, content: bytes):
    path = checkpoint_path(directory / "checkpoints", 5)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 half a zip"])
def test_damaged_checkpoints_are_refused(tmp_path, content):
    path = _damaged(tmp_path, content)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    for argv in (_par(tmp_path, "--resume"), ["generate", "perceiver-ar", "--checkpoint", str(tmp_path)]):
        status, err = _run(argv)
        assert status == 2 and "cannot be read" in err and "Traceback" not in err, err


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint's dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_checkpoints_of_another_system_are_refused(tmp_path):
    save_checkpoint(checkpoint_path(tmp_path / "ss" / "checkpoints", 2), {"system": "soundstream", "step": 2})
    generate = ["generate", "perceiver-ar", "--checkpoint", str(tmp_path / "ss")]
    for argv in (_par(tmp_path / "ss", "--resume"), generate):
        status, err = _run(argv)
        assert status == 2 and "is a soundstream checkpoint, not a perceiver-ar one" in err, err
    # Written before checkpoints named their system: a Wavesplit run's checkpoint.pt.
    save_checkpoint(tmp_path / "ws.pt", {"model": {}, "model_config": {"num_sources": 2}, "result": {}})
    status, err = _run(["generate", "perceiver-ar", "--checkpoint", str(tmp_path / "ws.pt")])
    assert status == 2 and "is not a perceiver-ar checkpoint" in err, err
    status, err = _run(["train", "soundstream", "--resume", "--out", str(tmp_path / "ss")])  # not a whole one
    assert status == 2 and "is not a soundstream checkpoint (it has no model_config, generator" in err, err


def test_resume_with_another_model_is_refused(tmp_path):
    other = PerceiverARConfig(vocab_size=256, max_context=96, latents=24, width=64, heads=2, layers=1)
    save_checkpoint(checkpoint_path(tmp_path / "checkpoints", 2), {
        "system": "perceiver-ar", "step": 2, "model_config": other.to_dict(), "model": {}, "opt": {}, "history": {},
        "rng": [capture_rng_state()]})
    status, err = _run(_par(tmp_path, "--resume"))
    assert status == 2 and "width: 64 -> 32" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_device_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick_device("cuda")
    status, err = _run(_par(tmp_path, "--device", "cuda"))
    assert status == 2 and "torch sees no CUDA device" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bench_refuses_a_time_that_is_not_positive(value):
    status, err = _run(["bench", "--min-time", value])
    assert status == 2 and "argument --min-time" in err


@pytest.mark.parametrize("trainer", ["leaf", "cola", "diffstride", "dive", "wavesplit", "permutation", "llp"])
@pytest.mark.parametrize("left", ["results.json", "log.csv", "checkpoint.pt", "checkpoints/mel_epoch3.pt"])
def test_trainers_without_resume_refuse_an_output_directory_with_a_run_in_it(trainer, left, tmp_path):
    """A new run into an earlier run's directory would overwrite some files and leave the others (its
    later epochs' checkpoints) beside its own: refused before any work, for every such trainer."""
    (tmp_path / left).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / left).write_text("{}")
    status, err = _run(["train", trainer, "--out", str(tmp_path)])
    assert status == 2 and "already holds the outputs of a run" in err and left in err, err


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    argv = ["train", "leaf", "--epochs", "1", "--train-size", "32", "--test-size", "16", "--frontends", "mel",
            "--out", str(tmp_path), "--no-progress"]
    assert _run(argv)[0] == 0 and (tmp_path / "results.json").exists()
    status, err = _run(argv)
    assert status == 2 and "choose another --out" in err
