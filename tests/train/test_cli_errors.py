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
from pyaudiok.train.runtime import ConfigError, check_options, pick_device, writable_output_dir

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
    (["train", "dive", "--max-speakers", "0"], "max_speakers must be >= 1"),
    (["train", "wavesplit", "--batch", "0"], "--batch must be > 0"),
    (["train", "permutation", "--log-every", "0"], "--log-every must be > 0"),
    (["train", "cola", "--widths", "a,b"], "--widths must be comma-separated integers"),
    (["train", "cola", "--steps", "0"], "--steps must be > 0"),
    (["train", "diffstride", "--steps", "0"], "--steps must be > 0"),
    (["train", "leaf", "--frontends", "bogus"], "unknown or no frontend"),
    (["train", "leaf", "--epochs", "0"], "--epochs must be > 0"),
    (["train", "llp", "--lr", "-1"], "--lr must be > 0"),
    # Options within their sign but outside what the data, the metric or the model can take.
    (["train", "dive", "--eval-speakers", "2"], "--eval-speakers must be >= 3 (a conversation takes up to 3"),
    (["train", "dive", "--train-speakers", "1", "--max-speakers", "2"], "--train-speakers must be >= 2"),
    (["train", "wavesplit", "--train-speakers", "1"], "--train-speakers must be >= 2 (a mixture takes"),
    (["train", "wavesplit", "--eval-speakers", "2", "--num-sources", "3"], "--eval-speakers must be >= 3"),
    (["train", "dive", "--sample-rate", "100"], "--sample-rate must be >= 1000"),
    (["train", "wavesplit", "--sample-rate", "100"], "--sample-rate must be >= 1000"),
    (["train", "wavesplit", "--segment-seconds", "inf"], "--segment-seconds must be finite"),
    (["train", "wavesplit", "--segment-seconds", "1e-9"], "gives no samples"),
    (["train", "dive", "--eval-collar", "inf"], "--eval-collar must be finite"),
    (["train", "dive", "--duration", "inf"], "--duration must be finite"),
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


@pytest.mark.parametrize("value", ["0", "-1", "x", "inf", "nan"])
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


@pytest.mark.parametrize("option, words", [
    (["--steps", "-1"], "--steps must be >= 0; got -1"), (["--top-p", "1.5"], "--top-p must be in [0, 1]"),
    (["--top-p", "nan"], "--top-p must be in [0, 1]"), (["--top-k", "-3"], "--top-k must be > 0"),
    (["--top-k", "0"], "--top-k must be > 0"), (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--temperature", "inf"], "--temperature must be finite"),
])
def test_generate_options_out_of_range_are_one_line_errors(option, words, tmp_path):
    status, err = _run(["generate", "perceiver-ar", "--checkpoint", str(tmp_path / "none"), *option])
    assert status == 2 and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("trainer", sorted(cli.TRAINERS))
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_every_trainer_checks_its_output_directory_before_the_run(trainer, where, tmp_path):
    """An --out that is a file, or that cannot be created, is refused before the work, not after it."""
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" if where == "a file" else tmp_path / "afile" / "run"
    status, err = _run(["train", trainer, "--out", str(out)])
    words = "is not a directory" if where == "a file" else "cannot be created or written"
    assert status == 2 and f"--out {out} {words}" in err and "Traceback" not in err, err


def test_writable_output_dir_creates_the_directory(tmp_path):
    writable_output_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # no probe left
    writable_output_dir(None)


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_bench_checks_its_output_paths_before_timing(flag, tmp_path):
    (tmp_path / "afile").write_text("")
    for path, words in ((tmp_path, "is a directory"), (tmp_path / "afile" / "x", "is not a directory")):
        status, err = _run(["bench", "--only", "no-such-bench", flag, str(path)])  # refused before the names
        assert status == 2 and f"pyaudiok bench: {flag}" in err and words in err, err


def _untrained_run(directory, system: str):
    """A `pyaudiok train wavesplit|dive` output directory holding an untrained tiny model."""
    from dataclasses import asdict

    from pyaudiok.models.dive import DIVE, DIVEConfig
    from pyaudiok.models.wavesplit import Wavesplit, WavesplitConfig
    from pyaudiok.train.runtime import write_run

    torch.manual_seed(0)
    if system == "wavesplit":
        model = Wavesplit(WavesplitConfig(num_sources=2, num_speakers=4, channels=8, embed_dim=4, speaker_layers=1,
                                          separation_layers=1))
    else:
        model = DIVE(DIVEConfig(sample_rate=8_000, channels=8, embed_dim=4, layers=1))
    write_run(directory, [], {"config": {"sample_rate": 8_000}}, model, asdict(model.config), system=system)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {system: str(_untrained_run(root / system, system)) for system in ("wavesplit", "dive")}


def _wav(path, samples, subtype="FLOAT"):
    import numpy as np
    import soundfile as sf

    sf.write(path, np.asarray(samples, dtype=np.float32), 8_000, subtype=subtype)
    return str(path)


def test_separate_refuses_empty_audio_and_an_output_that_is_a_file_or_cannot_be_made(runs, tmp_path):
    mix = _wav(tmp_path / "mix.wav", 0.1 * torch.randn(800).numpy())
    status, err = _run(["separate", _wav(tmp_path / "empty.wav", []), "--checkpoint", runs["wavesplit"],
                        str(tmp_path / "out")])
    assert status == 2 and "x must hold at least one frame" in err and "Traceback" not in err, err
    status, err = _run(["separate", mix, "--checkpoint", runs["wavesplit"], mix])
    assert status == 2 and f"output directory {mix} is not a directory" in err, err
    status, err = _run(["separate", mix, "--checkpoint", runs["wavesplit"], str(tmp_path / "mix.wav" / "out")])
    assert status == 2 and "cannot be created or written" in err and "Traceback" not in err, err
    assert _run(["separate", mix, "--checkpoint", runs["wavesplit"], str(tmp_path / "out")])[0] == 0


@pytest.mark.parametrize("tool", ["separate", "diarize"])
def test_tools_refuse_non_finite_audio_and_an_unreadable_checkpoint(tool, runs, tmp_path):
    bad = _wav(tmp_path / "nan.wav", [0.0, float("nan")] * 400)
    run = runs["wavesplit" if tool == "separate" else "dive"]
    outdir = [str(tmp_path / "out")] if tool == "separate" else []
    status, err = _run([tool, bad, "--checkpoint", run, *outdir])
    assert status == 2 and "holds NaN or infinite samples" in err, err
    good = _wav(tmp_path / "ok.wav", 0.1 * torch.randn(800).numpy())
    status, err = _run([tool, good, "--checkpoint", str(tmp_path), *outdir])  # a directory without a checkpoint
    assert status == 2 and "Traceback" not in err, err
    (tmp_path / "odd" / "checkpoint.pt").mkdir(parents=True)  # reading it is an OSError (a directory)
    status, err = _run([tool, good, "--checkpoint", str(tmp_path / "odd"), *outdir])
    assert status == 2 and "Is a directory" in err and "Traceback" not in err, err


@pytest.mark.parametrize("threshold", ["2", "-1", "nan"])
def test_diarize_threshold_must_be_a_probability(threshold, runs, tmp_path):
    wav = _wav(tmp_path / "ok.wav", 0.1 * torch.randn(800).numpy())
    status, err = _run(["diarize", wav, "--checkpoint", runs["dive"], "--threshold", threshold])
    assert status == 2 and "--threshold must be in [0, 1]" in err, err
    assert _run(["diarize", wav, "--checkpoint", runs["dive"], "--threshold", "1"])[0] == 0


@pytest.mark.parametrize("trainer, words", [("wavesplit", "speakers in each mixture (default: 2)"),
                                            ("dive", "evaluation: total collar width")])
def test_generated_options_show_what_they_do_and_their_defaults(trainer, words, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", trainer, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert words in text and "(default: 0.001)" in text
