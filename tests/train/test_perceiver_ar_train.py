"""`pyaudiok train perceiver-ar` / `generate perceiver-ar` at toy sizes: loss falls, exact resume,
checkpoint round trip, DDP under torchrun, the byte corpus."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from pyaudiok.cli import main as cli_main
from pyaudiok.data.text_corpus import ByteCorpus
from pyaudiok.train import perceiver_ar as trainer
from pyaudiok.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = ["--context", "96", "--latents", "24", "--width", "32", "--heads", "2", "--layers", "1", "--batch-size", "4",
       "--corpus-bytes", "300000", "--eval-windows", "4", "--eval-every", "1000", "--log-every", "5",
       "--threads", "1", "--no-progress", "--lr", "3e-3", "--warmup", "5"]


def _config(tmp_path, *extra):
    args = trainer.build_parser().parse_args(TOY + ["--out", str(tmp_path)] + list(extra))
    return trainer.TrainConfig(**vars(args))


def test_short_run_loss_falls(tmp_path):
    metrics = trainer.train(_config(tmp_path, "--steps", "60"))
    assert metrics["step"] == 60
    first = float((tmp_path / "valid_log.csv").read_text().splitlines()[1].split(",")[1])
    assert abs(first - 8.0) < 1e-3  # zero-initialised logits: uniform over 256 bytes
    # 60 toy steps reach about the unigram entropy (the default run goes well below it).
    assert metrics["valid_bits_per_byte"] < metrics["unigram_bits_per_byte"] + 0.3
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 1 + 60 // 5
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [60]


def test_resume_takes_exactly_the_same_steps(tmp_path):
    straight = trainer.train(_config(tmp_path / "a", "--steps", "6", "--checkpoint-every", "3"))
    trainer.train(_config(tmp_path / "b", "--steps", "3", "--checkpoint-every", "3"))
    resumed = trainer.train(_config(tmp_path / "b", "--steps", "6", "--checkpoint-every", "3", "--resume"))
    a = trainer.load_model(tmp_path / "a").state_dict()
    b = trainer.load_model(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["valid_bits_per_byte"] == resumed["valid_bits_per_byte"]
    assert (tmp_path / "a" / "train_log.csv").read_text() == (tmp_path / "b" / "train_log.csv").read_text()


def test_checkpoint_round_trip_and_generate_command(tmp_path, capsys):
    assert cli_main(["train", "perceiver-ar", *TOY, "--steps", "2", "--out", str(tmp_path)]) == 0
    model = trainer.load_model(tmp_path)
    state = torch.load(list_checkpoints(tmp_path / "checkpoints")[-1][1], weights_only=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    capsys.readouterr()
    args = ["generate", "perceiver-ar", "--checkpoint", str(tmp_path), "--prompt", "def f(", "--steps", "30"]
    assert cli_main(args) == 0
    cached = capsys.readouterr().out
    assert cli_main(args + ["--no-cache"]) == 0
    assert capsys.readouterr().out == cached and cached.startswith("def f(")
    assert cli_main(["generate", "perceiver-ar", "--checkpoint", str(tmp_path / "nothing")]) == 2
    if not torch.cuda.is_available():  # asked for a GPU path that is not there: a clear refusal
        assert cli_main(args + ["--device", "cuda"]) == 2
    assert cli_main(args + ["--cuda-graphs"]) == 2  # on the CPU
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
def test_generate_command_on_the_gpu_with_cuda_graphs(tmp_path, capsys):
    assert cli_main(["train", "perceiver-ar", *TOY, "--steps", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    args = ["generate", "perceiver-ar", "--checkpoint", str(tmp_path), "--prompt", "def f(", "--steps", "30",
            "--device", "cuda"]
    assert cli_main(args + ["--no-cuda-graphs"]) == 0
    eager = capsys.readouterr().out
    for graphs in (["--cuda-graphs"], []):  # always, and the automatic choice
        assert cli_main(args + graphs) == 0
        assert capsys.readouterr().out == eager and eager.startswith("def f(")


def _worker_errors(stderr: str) -> str:
    """The workers' own error lines, which torchrun's closing traceback would push out of view."""
    keys = ("Error", "error", "terminate", "what()", "Exception", "Abort")
    return "\n".join(line for line in stderr.splitlines() if any(k in line for k in keys))[-4000:]


def test_distributed_run_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if os.path.exists("/sys/class/net/lo"):  # keep gloo on loopback in sandboxed machines
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "pyaudiok.train.perceiver_ar", *TOY, "--steps", "3", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0 and "Signal " in out.stderr:
        # A worker killed by a signal (once in CI: SIGABRT in rank 0, not reproduced in dozens of
        # runs here): run once more from scratch, and say so. A second failure, or any failure
        # that is an exception of ours, fails the test.
        warnings.warn(f"torchrun worker died by a signal; rerunning once:\n{_worker_errors(out.stderr)}")
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, _worker_errors(out.stderr) + "\n...\n" + out.stderr[-1500:]
    assert "valid_bits_per_byte" in out.stdout
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]


def test_corpus_windows_are_reproducible():
    corpus = ByteCorpus.stdlib(200_000)
    a, b = corpus.batch(50, 3, seed=1, step=7), corpus.batch(50, 3, seed=1, step=7)
    assert torch.equal(a, b) and not torch.equal(a, corpus.batch(50, 3, seed=1, step=8))
    assert a.dtype == torch.int64 and a.max() < 256
    assert torch.equal(corpus.valid_windows(40, 3), corpus.valid_windows(40, 3))
    assert 3.0 < corpus.unigram_entropy() < 6.0
    with pytest.raises(ValueError, match="fewer than a window"):
        corpus.valid_windows(10**6, 2)
