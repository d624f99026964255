"""The benchmark harness and `pyaudiok bench` (smallest sizes, short timing)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pyaudiok.bench import harness
from pyaudiok.ops import latent_cross_attention


def test_ratios_and_failing_peer_reported_not_raised():
    calls = []

    def boom():
        raise RuntimeError("peer broke")
    case = harness.Case("demo", {"n": 1}, [
        harness.Candidate("reference", "reference", lambda: calls.append("r") or torch.ones(2000).sum()),
        harness.Candidate("fast", "backend", lambda: calls.append("f") or torch.ones(20).sum(),
                          check=lambda out, ref: "same" if torch.equal(out, ref) else "differs"),
        harness.Candidate("broken peer", "peer", boom),
        harness.Candidate("missing peer", "peer", None, skip="not installed"),
    ])
    results = harness.run_case(case, torch.device("cpu"), min_time=0.01)
    ref, fast, broken, missing = results
    assert ref.speedup_vs_reference == 1.0 and fast.speedup_vs_reference > 0
    assert fast.note == "differs"  # the check compares against the reference output
    assert broken.skip.startswith("failed: RuntimeError: peer broke") and broken.median_s is None
    assert missing.skip == "not installed"
    table = harness.format_table(results)
    assert "broken peer" in table and "not installed" in table


def test_compiled_peer_is_the_reference_under_torch_compile():
    import pyaudiok
    from pyaudiok.ops import rvq_decode
    codes, books = torch.randint(0, 5, (7, 2)), torch.randn(2, 5, 3)
    graphs = []

    def traced():
        graphs.append(torch.compiler.is_compiling())
        return rvq_decode(codes, books)
    same = lambda out, ref: "identical" if torch.equal(out, ref) else "differs"  # noqa: E731
    case = harness.Case("demo", {}, [
        harness.Candidate("reference", "reference",
                          harness.with_backend("reference", lambda: rvq_decode(codes, books))),
        harness.compiled("reference, torch.compile", traced, check=same)])
    torch._dynamo.reset()
    with pyaudiok.use_backend("cpu"):  # the candidate forces its own backend
        reference, peer = harness.run_case(case, torch.device("cpu"), min_time=0.01)
    assert peer.kind == "peer" and peer.skip is None and peer.note == "identical"
    assert graphs and graphs[0], "the candidate's function was not traced by torch.compile"


def test_peer_summary_tells_sizes_of_one_case_apart():
    results = []
    for n, (ours, peer) in {1: (1.0, 2.0), 2: (1.0, 5.0)}.items():
        rows = [harness.Result("demo", "cpu", "backend", {"n": n}, median_s=ours),
                harness.Result("demo", "peer lib", "peer", {"n": n}, median_s=peer)]
        results += rows
    assert harness.peer_summary(results)[:2] == ["demo (n=1): cpu is 2.00x peer lib",
                                                 "demo (n=2): cpu is 5.00x peer lib"]


def test_model_steps_run_on_both_routes_from_the_same_start():
    """Every model of the end-to-end bench trains one step on the reference ops and on the fused
    ones; their first losses agree (same weights, same batch)."""
    from pyaudiok.bench import registry
    for case in registry.collect(torch.device("cpu"), quick=True, only=["models"]):
        reference, fused, *compiled = harness.run_case(case, torch.device("cpu"), min_time=0.0)
        assert reference.skip is None and fused.skip is None, (case.name, reference.skip, fused.skip)
        assert all("not --quick" in c.skip for c in compiled)
        relative = float(fused.note.split()[-1])
        assert relative < 1e-4, (case.name, fused.note)


def test_quick_runs_leave_compiled_peers_out():
    from pyaudiok.bench import registry
    cases = list(registry.collect(torch.device("cpu"), quick=True, only=["rvq"]))
    peers = [c for case in cases for c in case.candidates if c.compiles]
    assert peers and all(c.run is None and "not --quick" in c.skip for c in peers)


def test_cli_bench_quick_writes_json_and_plot(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pyaudiok", "bench", "--quick", "--only", "rvq", "--min-time", "0.01",
                          "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "rvq.forward" in out.stdout and "floor: stage matmuls" in out.stdout
    rows = json.loads((tmp_path / "r.json").read_text())
    assert {"device", "torch", "commit", "date", "median_s", "peak_bytes"} <= set(rows[0])
    cpu = next(r for r in rows if r["case"] == "rvq.forward" and r["candidate"] == "cpu")
    assert cpu["median_s"] > 0 and cpu["note"] == "codes identical"
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_profile_lists_the_operators_of_a_case():
    out = subprocess.run([sys.executable, "-m", "pyaudiok.bench.profile", "--only", "fourier_crop", "--case", "2d",
                          "--index", "3", "--candidate", "reference", "--device", "cpu", "--quick", "--calls", "1",
                          "--rows", "60"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fourier_crop.2d.fwd+bwd" in out.stdout and "-- reference:" in out.stdout
    # the reference's transforms are among its operators (all of them listed: on a busy machine the
    # order of the top few is noise)
    assert "aten::_fft_r2c" in out.stdout


def test_profile_by_host_time_with_python_hotspots():
    out = subprocess.run([sys.executable, "-m", "pyaudiok.bench.profile", "--only", "fourier_crop", "--case", "2d",
                          "--candidate", "auto", "--device", "cpu", "--quick", "--calls", "2", "--rows", "30",
                          "--sort", "cpu", "--python"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "-- auto (dispatch by size): Python functions by own time over 2 calls" in out.stdout
    assert "fourier_crop.py" in out.stdout  # the op's own Python frames are listed


def test_host_cost_times_each_op_both_ways():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-m", "pyaudiok.bench.host_cost", "--device", "cpu", "--calls", "2",
                          "--rounds", "1"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "skipped" not in out.stdout, out.stdout
    assert "trivial kernel: direct launch" in out.stdout
    for op in ("fourier_crop 2-D 32x32, matmul", "latent_cross_attention", "sinkhorn", "soft_rank", "pcen",
               "bilinear_contrastive_loss", "collar_vad_loss", "distance_logsumexp",
               "reorder_channels"):
        line = next(line for line in out.stdout.splitlines() if line.startswith(op))
        assert "direct" in line and "registered" in line and "saved" in line


def test_cli_rejects_unknown_benchmark():
    out = subprocess.run([sys.executable, "-m", "pyaudiok", "bench", "--only", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "unknown benchmark" in out.stderr


def test_tile_sweep_runs_every_kernel_and_reports_the_best():
    """The GPU tile sweep, checked in Triton's interpreter at toy size (timings meaningless here)."""
    from pyaudiok.bench import tile_sweep
    from pyaudiok.kernels.latent_attention import _Tile
    tiles = [_Tile(16, 16, 4, 1), _Tile(32, 16, 4, 1)]
    grids = {"forward": tiles, "dK/dV": tiles, "dQ": tiles[:1]}
    rows, best, baselines = tile_sweep.sweep(16, 48, 16, torch.float32, torch.device("cpu"), min_time=0.0,
                                             grids=grids)
    assert [r.kernel for r in rows] == ["forward"] * 2 + ["dK/dV"] * 2 + ["dQ"]
    assert all(r.seconds is not None and r.seconds > 0 for r in rows), rows
    assert len(best) == 3 and all(isinstance(t, _Tile) for t in best)
    assert set(baselines) == {"current forward", "current backward",
                              "current forward, again", "current backward, again"}
    text = tile_sweep.report(rows, best, baselines)
    assert "best (forward, dK/dV, dQ)" in text and "current backward" in text


def test_latent_attention_decode_candidate_computes_the_attention():
    """The decode case's Triton candidate (16-query tile, fixed key splits), in the interpreter: the
    reference's output, and the kernels' tile choice restored after it."""
    from pyaudiok.bench.bench_latent_attention import _decode_tiles
    from pyaudiok.kernels import latent_attention as kernels
    from pyaudiok.ops.latent_attention import latent_attention_reference
    q, k, v = (torch.randn(1, 2, s, 32) for s in (1, 200, 200))
    tiles = kernels._tiles
    out = _decode_tiles(4)(q, k, v)
    assert kernels._tiles is tiles
    ref = latent_attention_reference(q, k, v, None, 32 ** -0.5)
    assert ((out - ref).norm() / ref.norm()) < 1e-5


def test_latent_attention_kernel_variants_run_under_their_settings_and_restore_them(monkeypatch):
    """The GPU-only Triton variants (lazy rescale, overlapped loop, atomic dQ): each candidate runs with
    its kernel settings made current, gives the attention's gradients, and leaves the defaults as they
    were."""
    from pyaudiok.bench.bench_latent_attention import _triton_variants
    from pyaudiok.kernels import latent_attention as kernels
    seen = []
    forward_settings = lambda: f"{kernels.forward_rescale()}/{kernels.forward_loop()}"  # noqa: E731
    for name, setting in (("launch_forward", forward_settings), ("launch_backward", kernels.dq_mode)):
        def spy(*args, launch=getattr(kernels, name), setting=setting, **kwargs):
            seen.append(setting())
            return launch(*args, **kwargs)
        monkeypatch.setattr(kernels, name, spy)
    q, k, v = (torch.randn(1, 2, s, 16, requires_grad=True) for s in (8, 40, 40))

    def step():
        out = latent_cross_attention(q, k, v)
        out.sum().backward()
        return out
    cands = _triton_variants(step, backward=True)
    forward = ["lazy rescale", "overlapped loop"]
    assert [c.name for c in cands] == ([f"triton, {name}" for name in forward] + ["triton, atomic dQ"]
                                       + [f"triton, {name} + atomic dQ" for name in forward])
    for cand in cands:
        cand.run()
    settings = ["lazy/sequential", "always/overlapped"]
    assert seen == ([x for s in settings for x in (s, "separate")] + ["always/sequential", "atomic"]
                    + [x for s in settings for x in (s, "atomic")])
    assert (kernels.FORWARD_RESCALE, kernels.FORWARD_LOOP, kernels.DQ_MODE) == ("always", "sequential", "separate")
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_sdpa_held_to_one_backend_runs_it_or_raises():
    """The bench's per-backend SDPA peers: held to a backend that can run the call, SDPA gives its
    usual answer; held to one that cannot (the memory-efficient kernels on a CPU), it raises, which
    the harness reports as that peer failed, not as another backend's time."""
    from torch.nn.attention import SDPBackend
    from torch.nn.attention.bias import causal_lower_right

    from pyaudiok.bench.bench_latent_attention import sdpa_on
    q, k, v = (torch.randn(1, 2, s, 16) for s in (8, 40, 40))
    mask = causal_lower_right(8, 40)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(sdpa_on(SDPBackend.MATH, q, k, v, mask), want)
    with pytest.raises(RuntimeError):
        sdpa_on(SDPBackend.EFFICIENT_ATTENTION, q, k, v, mask)


def test_sass_census_of_the_latent_attention_kernels():
    """The kernels compiled for sm_90 at their GPU tiles, as launches at the bench size are specialised:
    every one pipelines its loads (cp.async); the forward's variants spill nothing in their loops
    (nothing at all but the overlapped one, capped at 128 registers), take at most 128 registers (two
    CTAs an SM), the rescale variants run the same tensor-core ops, and with the scale folded into the
    exp2 FMA the default has no FMUL per score beyond the accumulator's rescale (128 x 64 tiles over
    256 threads: 32 a block per loop, two loops, ~176 in all; 236 with the tile scaled first); only the
    overlapped loop's softmax runs before its first wgmma wait (the previous PV product in flight);
    the atomic dQ adds are relaxed, fire-and-forget reductions (REDG), not acquire-release atomics
    with fences (ATOMG, Triton's default)."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton has no NVIDIA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "pyaudiok.bench.sass_census", "--json"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k: set(v) for k, v in counts.items()} == {"_fwd_kernel": {"always", "lazy", "overlap"},
                                                      "_bwd_dkdv_kernel": {"separate", "atomic"},
                                                      "_bwd_dq_kernel": {"separate"}}
    for kernel, variants in counts.items():
        for variant, c in variants.items():
            assert c["LDGSTS"] > 0 and c["HGMMA"] > 0, (kernel, variant, c)
            assert len(c["loops"]) >= 2 and min(c["loops"][:2]) > 100, (kernel, variant, c)  # unmasked, masked
    forward = counts["_fwd_kernel"]
    for variant, c in forward.items():
        assert c["loop_spills"] == 0 and c["registers"] <= 128 and c["shared"] >= 64 * 1024, (variant, c)
        assert c["overlap"] == (variant == "overlap"), (variant, c)
    for variant in ("always", "lazy"):
        assert forward[variant]["STL"] == forward[variant]["LDL"] == 0, forward[variant]
    assert forward["always"]["HGMMA"] == forward["lazy"]["HGMMA"]
    assert forward["always"]["MUFU"] == forward["lazy"]["MUFU"]
    assert forward["always"]["FMUL"] < 200, forward["always"]
    atomic = counts["_bwd_dkdv_kernel"]["atomic"]
    assert atomic["REDG"] > 0 and atomic["ATOMG"] == 0, atomic
    assert counts["_bwd_dkdv_kernel"]["separate"]["REDG"] == 0


def test_tile_sweep_tries_small_query_tiles_for_a_sampling_step():
    from pyaudiok.bench import tile_sweep
    from pyaudiok.kernels.latent_attention import _Tile
    rows = {n: {t.block_m for t in tile_sweep.candidate_tiles("forward", torch.bfloat16, _Tile, n)} for n in (1, 1024)}
    assert min(rows[1]) == 16 and min(rows[1024]) == 64


def test_tile_sweep_runs_under_the_kernel_settings_asked_for(monkeypatch):
    """With atomic dQ there is no dQ kernel to sweep; every forward runs the loop asked for; the
    settings are restored after, and a bad one fails before any timing."""
    from pyaudiok.bench import tile_sweep
    from pyaudiok.kernels import latent_attention
    loops, launch = [], latent_attention.launch_forward

    def spy(*args, **kwargs):
        loops.append(latent_attention.forward_loop())
        return launch(*args, **kwargs)
    monkeypatch.setattr(latent_attention, "launch_forward", spy)
    tiles = [latent_attention._Tile(16, 16, 4, 1)]
    rows, best, _ = tile_sweep.sweep(16, 48, 16, torch.float32, torch.device("cpu"), min_time=0.0,
                                     grids={"forward": tiles, "dK/dV": tiles, "dQ": tiles}, dq_mode="atomic",
                                     forward_loop="overlapped")
    assert [r.kernel for r in rows] == ["forward", "dK/dV"] and all(r.seconds for r in rows), rows
    assert loops and set(loops) == {"overlapped"}
    assert (latent_attention.DQ_MODE, latent_attention.FORWARD_LOOP) == ("separate", "sequential")  # restored
    with pytest.raises(ValueError, match="DQ_MODE must be"):
        tile_sweep.sweep(16, 48, 16, torch.float32, torch.device("cpu"), grids={}, dq_mode="fast")
    with pytest.raises(ValueError, match="FORWARD_LOOP must be"):
        tile_sweep.sweep(16, 48, 16, torch.float32, torch.device("cpu"), grids={}, forward_loop="fast")
    with pytest.raises(TypeError, match="unknown settings"):
        with latent_attention.settings_set(FORWARD_LOOPS="overlapped"):
            pass


def test_interleave_times_every_candidate_each_round_and_drops_failures(capsys, monkeypatch):
    from pyaudiok.bench import interleave
    modes = []  # the heap setting `pyaudiok bench` times under, also here
    monkeypatch.setattr(harness, "_malloc_mode", lambda for_peak_memory: modes.append(for_peak_memory))
    calls = []

    def boom():
        raise RuntimeError("peer broke")
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "broken": boom}
    times = interleave.interleaved(runs, torch.device("cpu"), rounds=3, warmup=1)
    assert set(times) == {"a", "b"} and all(len(t) == 3 for t in times.values())
    assert calls == ["a", "b"] * 4  # one warm-up round, then alternation
    assert modes == [False]
    assert "broken" in capsys.readouterr().out


def test_interleave_cli_on_a_quick_case(capsys):
    from pyaudiok.bench import interleave
    assert interleave.main(["--only", "models", "--case", "dive", "--quick", "--rounds", "2", "--warmup", "1",
                            "--device", "cpu", "--candidate", "stock PyTorch (reference"]) == 0
    out = capsys.readouterr().out
    assert "model_step.dive" in out and "stock PyTorch (reference ops)" in out and "median" in out


def test_interleave_refuses_an_unknown_benchmark_and_rounds_below_one(capsys):
    from pyaudiok.bench import interleave
    with pytest.raises(SystemExit, match="--only 'nosuch': no such benchmark; available: rvq"):
        interleave.main(["--only", "nosuch", "--case", "x"])
    for option in (["--rounds", "0"], ["--rounds", "-1"], ["--warmup", "-1"]):
        with pytest.raises(SystemExit) as stopped:
            interleave.main(["--only", "der", "--case", "x", *option])
        assert stopped.value.code == 2 and "--rounds must be >= 1 and --warmup >= 0" in capsys.readouterr().err


def test_eager_autograd_ab_times_both_ways_and_forces_the_registered_op():
    from pyaudiok.bench import ab_eager_autograd
    from pyaudiok.ops import _library
    times = ab_eager_autograd.compare("dive", torch.device("cpu"), rounds=1)
    assert {name: len(t) for name, t in times.items()} == {"eager Function": 1, "registered op": 1}
    assert all(t[0] > 0 for t in times.values())
    op = _library.cpp_op("collar_vad_forward") if _library.extension_loaded() else None
    if op is not None:
        with ab_eager_autograd._way("registered op"):
            assert op._eager_autograd() is None
        assert op._eager_autograd() is not None


def test_interleave_times_a_gpu_round_as_the_bench_does(monkeypatch):
    """On a GPU a round is the bench's queued-burst median (harness.time_median), not one wall-clock call."""
    from pyaudiok.bench import interleave
    asked = []
    monkeypatch.setattr(interleave, "time_median", lambda run, device, min_time: asked.append(min_time) or (0.5, 3))
    times = interleave.interleaved({"a": lambda: None, "b": lambda: None}, torch.device("cuda"), rounds=2, warmup=0)
    assert times == {"a": [0.5, 0.5], "b": [0.5, 0.5]} and asked == [0.0] * 4
