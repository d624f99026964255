"""The C++ CPU ops called directly (torch.ops.pyaudiok.*, past the Python layer's checks): index values
out of range, degenerate sizes, huge tuning arguments and unusable eps give a RuntimeError naming the
argument, never a crash, a hang or a read out of bounds; the edges of each valid range still match the
reference, values and gradients."""
import json
import re
import subprocess
import sys

import pytest
import torch

import pyaudiok
from pyaudiok.ops import collar_vad_loss, gather_rows_rotary, rvq_decode, soft_rank, token_attention
from pyaudiok.ops._library import extension_loaded
from pyaudiok.ops.latent_attention import latent_attention_reference

from ..harness import assert_close, compare_with_reference

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="the C++ extension is not built")

# Setups the cases below share (run before each case's code; `P` is torch.ops.pyaudiok).
SOFT = "x = torch.randn(4, 7); o, p, b = P.soft_sort_rank(x, .5, False, True, False); "
SOFT_BW = "P.soft_sort_rank_backward(torch.randn(4, 7), x, o, {perm}, {blocks}, .5, False, True, False)"
COLLAR = "lg, ref, od = torch.randn(2, 3, 50), torch.zeros(2, 2, 50), torch.zeros(2, 3, dtype=torch.long); "
ATTN = "q, k, v = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8); "
ATTN_BW = ATTN + "o, l = P.latent_attention_forward(q, k, v, None, .35, 0, 0); "
TOKENS = ("q, k, t = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.zeros(2, 6, dtype=torch.long); "
          "kt, vt = torch.randn(3, 5, 8), torch.randn(3, 5, 8); ")
TOKENS_BW = TOKENS + "o, l = P.latent_attention_tokens_forward(q, k, t, kt, vt, 4, .35, 0, 0); "
ANGLES = "cs, sn = torch.randn(5, 2), torch.randn(5, 2); "
TOKEN_ATTN = ANGLES + "q, rows, t = torch.randn(2, 2, 3, 8), torch.randn(16, 8), torch.zeros(2, 5, dtype=torch.long); "
TOKEN_ATTN_BW = TOKEN_ATTN + "o, l, kk = P.token_attention_cpu(q, rows, t, cs, sn, 4, 2); "
SINKHORN = ("c, la, lb = torch.rand(2, 5, 6), torch.full((2, 5), -1.6094), torch.full((2, 6), -1.7918); "
            "plan, f, g, it, hf, hg = P.sinkhorn_forward(c, la, lb, .1, 20, 0., True); ")
SINKHORN_BW = ("P.sinkhorn_backward(torch.randn(2, 5, 6), torch.randn(2, 5), torch.randn(2, 6), c, la, lb, plan, {}, "
               "hf, hg, {})")
PCEN = "E, prm = torch.rand(2, 6, 40), torch.rand(4, 6); "
GNFP = "x, gn, of, a = torch.randn(2, 6, 9), torch.randn(2, 6), torch.randn(2, 6), torch.rand(6); "
GNFP_BW = GNFP + "y, st = P.group_norm_film_prelu_forward(x, gn, of, a, 3, 1e-5); "
BIG = 2**40

# name -> (code, what the RuntimeError must say). A case whose pattern is None must run without error.
CASES = {
    "rvq_forward D=0": ("P.rvq_forward(torch.randn(20, 0), torch.randn(3, 5, 0), 2)", r"D >= 1"),
    "rvq_decode codes huge": (f"P.rvq_decode(torch.full((10, 2), {BIG}), torch.randn(3, 5, 8), None)",
                              r"codes must lie in \[0, 5\)"),
    "rvq_decode codes == K": ("P.rvq_decode(torch.full((10, 2), 5), torch.randn(3, 5, 8), None)",
                              r"codes must lie in \[0, 5\)"),
    "rvq_decode codes -1": ("P.rvq_decode(torch.full((10, 2), -1), torch.randn(3, 5, 8), None)",
                            r"codes must lie in \[0, 5\)"),
    "rvq_decode K=0": ("P.rvq_decode(torch.zeros(10, 2, dtype=torch.long), torch.randn(3, 0, 8), None)", r"K >= 1"),
    "fourier_crop_matrix_backward n_in=0": ("P.fourier_crop_matrix_backward(torch.randn(5, 0), torch.randn(3))",
                                            r"1 <= n_out <= n_in"),
    "fourier_crop_matrix_backward n_out > n_in": ("P.fourier_crop_matrix_backward(torch.randn(5, 3), torch.randn(3))",
                                                  r"1 <= n_out <= n_in"),
    "fourier_crop_matrix_backward mask 2-D": ("P.fourier_crop_matrix_backward(torch.randn(5, 8), torch.randn(3, 1))",
                                              r"mask must be 1-D"),
    "soft_sort_rank_backward perm huge": (SOFT + SOFT_BW.format(perm=f"torch.full_like(p, {BIG})", blocks="b"),
                                          r"perm must lie in \[0, 7\)"),
    "soft_sort_rank_backward perm == n": (SOFT + SOFT_BW.format(perm="torch.full_like(p, 7)", blocks="b"),
                                          r"perm must lie in \[0, 7\)"),
    "soft_sort_rank_backward perm -1": (SOFT + SOFT_BW.format(perm="torch.full_like(p, -1)", blocks="b"),
                                        r"perm must lie in \[0, 7\)"),
    "soft_sort_rank_backward blocks -1": (SOFT + SOFT_BW.format(perm="p", blocks="torch.full_like(b, -1)"),
                                          r"blocks\[0, 0\] must lie in \[0, 7\)"),
    "soft_sort_rank_backward blocks 100": (SOFT + SOFT_BW.format(perm="p", blocks="torch.full_like(b, 100)"),
                                           r"blocks\[0, 0\] must lie in \[0, 7\)"),
    "soft_sort_rank_backward block ends before its position": (
        SOFT + SOFT_BW.format(perm="p", blocks="torch.zeros_like(b)"), r"blocks\[0, 1\] must lie in \[1, 7\)"),
    "collar_vad_forward order huge": (COLLAR + f"od[0, 0] = {BIG}; P.collar_vad_forward(lg, ref, od, 2.)",
                                      r"order .*must lie in \[-1, 2\)"),
    "collar_vad_forward order == S": (COLLAR + "od[1, 2] = 2; P.collar_vad_forward(lg, ref, od, 2.)",
                                      r"order .*must lie in \[-1, 2\)"),
    "collar_vad_forward order -2": (COLLAR + "od[1, 2] = -2; P.collar_vad_forward(lg, ref, od, 2.)",
                                    r"order .*must lie in \[-1, 2\)"),
    "collar_vad_forward S=0": (COLLAR + "P.collar_vad_forward(lg, ref[:, :0].contiguous(), od, 2.)",
                               r"order .*must lie in \[-1, 0\)"),
    "collar_vad_backward order huge": (
        COLLAR + f"l, kp, n = P.collar_vad_forward(lg, ref, od, 2.); od[1, 1] = {BIG}; "
        "P.collar_vad_backward(torch.tensor(1.), lg, ref, od, kp, n)", r"order .*must lie in \[-1, 2\)"),
    "latent_attention_forward query_block 2**63-1": (
        ATTN + f"P.latent_attention_forward(q, k, v, None, .35, {2**63 - 1}, 0)",
        r"query_block must lie in \[0, 1048576\]"),
    "latent_attention_forward key_block 2**20+1": (
        ATTN + f"P.latent_attention_forward(q, k, v, None, .35, 0, {2**20 + 1})",
        r"key_block must lie in \[0, 1048576\]"),
    "latent_attention_backward query_block 2**62": (
        ATTN_BW + f"P.latent_attention_backward(torch.randn_like(q), q, k, v, o, l, None, .35, {2**62}, 0)",
        r"query_block must lie in \[0, 1048576\]"),
    "latent_attention_backward key_block 2**62": (
        ATTN_BW + f"P.latent_attention_backward(torch.randn_like(q), q, k, v, o, l, None, .35, 0, {2**62})",
        r"key_block must lie in \[0, 1048576\]"),
    "latent_attention_tokens_forward key_block 2**62": (
        TOKENS + f"P.latent_attention_tokens_forward(q, k, t, kt, vt, 4, .35, 0, {2**62})",
        r"key_block must lie in \[0, 1048576\]"),
    "latent_attention_tokens_forward token == V": (
        TOKENS + "t[1, 2] = 5; P.latent_attention_tokens_forward(q, k, t, kt, vt, 4, .35, 0, 0)",
        r"tokens must lie in \[0, 5\)"),
    "latent_attention_tokens_forward token -1": (
        TOKENS + "t[0, 0] = -1; P.latent_attention_tokens_forward(q, k, t, kt, vt, 4, .35, 0, 0)",
        r"tokens must lie in \[0, 5\)"),
    "latent_attention_tokens_backward token == V": (
        TOKENS_BW + "t[1, 2] = 5; P.latent_attention_tokens_backward(torch.randn_like(q), q, k, o, l, t, kt, vt, 4, "
        ".35, 0, 0)", r"tokens must lie in \[0, 5\)"),
    "latent_attention_tokens_backward query_block 2**62": (
        TOKENS_BW + f"P.latent_attention_tokens_backward(torch.randn_like(q), q, k, o, l, t, kt, vt, 4, .35, {2**62}, "
        "0)",
        r"query_block must lie in \[0, 1048576\]"),
    "gather_rotary_forward index huge": (
        ANGLES + f"P.gather_rotary_forward(torch.randn(10, 8), torch.full((2, 3, 5), {BIG}), cs, sn, 4)",
        r"index .*must lie in \[0, 10\)"),
    "gather_rotary_forward index == R": (
        ANGLES + "P.gather_rotary_forward(torch.randn(10, 8), torch.full((2, 3, 5), 10), cs, sn, 4)",
        r"index .*must lie in \[0, 10\)"),
    "gather_rotary_forward index -1": (
        ANGLES + "P.gather_rotary_forward(torch.randn(10, 8), torch.full((2, 3, 5), -1), cs, sn, 4)",
        r"index .*must lie in \[0, 10\)"),
    "gather_rotary_forward R=0": (
        ANGLES + "P.gather_rotary_forward(torch.randn(0, 8), torch.zeros(2, 3, 5, dtype=torch.long), cs, sn, 4)",
        r"index .*must lie in \[0, 0\)"),
    "gather_rotary_backward index >= num_rows": (
        ANGLES + "P.gather_rotary_backward(torch.randn(2, 3, 5, 8), torch.full((2, 3, 5), 2), cs, sn, 4, 2)",
        r"index .*must lie in \[0, 2\)"),
    "gather_rotary_backward num_rows 0": (
        ANGLES + "P.gather_rotary_backward(torch.randn(2, 3, 5, 8), torch.zeros(2, 3, 5, dtype=torch.long), cs, sn, "
        "4, 0)", r"index .*must lie in \[0, 0\)"),
    "split_heads_rotary_forward parts·heads overflow": (
        ANGLES + f"P.split_heads_rotary_forward(torch.randn(2, 5, 48), {2**32}, {2**32}, cs, sn, 4, 0)",
        r"parts·heads .*overflows"),
    "split_heads_rotary_forward C=0 with 2**40 parts": (
        f"y = P.split_heads_rotary_forward(torch.randn(1, 1, 0), {BIG}, 1, torch.randn(1, 0), torch.randn(1, 0), 0, 0);"
        f" assert y.shape == ({BIG}, 1, 1, 1, 0)", None),
    "token_attention_cpu token huge": (TOKEN_ATTN + f"t[0, 0] = {BIG}; P.token_attention_cpu(q, rows, t, cs, sn, 4, 2)",
                                       r"(index|tokens) .*must lie in"),
    "token_attention_cpu token -1": (TOKEN_ATTN + "t[0, 0] = -1; P.token_attention_cpu(q, rows, t, cs, sn, 4, 2)",
                                     r"(index|tokens) .*must lie in"),
    "token_attention_cpu token == V": (TOKEN_ATTN + "t[0, 0] = 4; P.token_attention_cpu(q, rows, t, cs, sn, 4, 2)",
                                       r"tokens must lie in \[0, 4\)"),
    "token_attention_cpu_backward token huge": (
        TOKEN_ATTN_BW + f"t[0, 0] = {BIG}; P.token_attention_cpu_backward(torch.randn_like(q), q, rows, t, cs, sn, kk, "
        "o, l, 4, 2)", r"tokens must lie in \[0, 4\)"),
    "gather_rotary_cpu index huge": (
        ANGLES + f"P.gather_rotary_cpu(torch.randn(10, 8), torch.full((2, 3, 5), {BIG}), cs, sn, 4)",
        r"index .*must lie in \[0, 10\)"),
    "gather_rotary_cpu_backward num_rows small": (
        ANGLES + "P.gather_rotary_cpu_backward(torch.randn(2, 3, 5, 8), torch.full((2, 3, 5), 9), cs, sn, 4, 1)",
        r"index .*must lie in \[0, 1\)"),
    "split_heads_rotary_cpu parts·heads overflow": (
        ANGLES + f"P.split_heads_rotary_cpu(torch.randn(2, 5, 48), {2**32}, {2**32}, cs, sn, 4, 0)",
        r"parts·heads .*overflows"),
    "sinkhorn_forward eps 1e-300": (SINKHORN + "P.sinkhorn_forward(c, la, lb, 1e-300, 20, 0., True)",
                                    r"eps must be finite and >= "),
    "sinkhorn_forward eps inf": (SINKHORN + "P.sinkhorn_forward(c, la, lb, float('inf'), 20, 0., True)",
                                 r"eps must be finite and >= "),
    "sinkhorn_backward eps 0": (SINKHORN + SINKHORN_BW.format("it", "0."), r"eps must be finite and >= "),
    "sinkhorn_backward eps -1": (SINKHORN + SINKHORN_BW.format("it", "-1."), r"eps must be finite and >= "),
    "sinkhorn_backward iters negative": (SINKHORN + SINKHORN_BW.format("torch.full_like(it, -5)", ".1"),
                                         r"iters .*must lie in \[0, 21\)"),
    "sinkhorn_backward iters beyond the history": (SINKHORN + SINKHORN_BW.format("torch.full_like(it, 21)", ".1"),
                                                   r"iters .*must lie in \[0, 21\)"),
    "pcen_forward eps nan": (PCEN + "P.pcen_forward(E, prm, float('nan'))", r"eps must be finite and >= 0"),
    "pcen_forward eps -1": (PCEN + "P.pcen_forward(E, prm, -1.)", r"eps must be finite and >= 0"),
    "pcen_backward eps inf": (PCEN + "y, _ = P.pcen_forward(E, prm, 1e-6); "
                              "P.pcen_backward(torch.randn_like(E), E, y, prm, float('inf'))",
                              r"eps must be finite and >= 0"),
    "group_norm_film_prelu eps 0": (GNFP + "P.group_norm_film_prelu_forward(x, gn, of, a, 3, 0.)",
                                    r"eps must be finite and > 0"),
    "group_norm_film_prelu eps nan": (GNFP + "P.group_norm_film_prelu_forward(x, gn, of, a, 3, float('nan'))",
                                      r"eps must be finite and > 0"),
    "group_norm_film_prelu num_groups 4": (GNFP + "P.group_norm_film_prelu_forward(x, gn, of, a, 4, 1e-5)",
                                           r"num_groups must be >= 1 and divide C = 6"),
    "group_norm_film_prelu num_groups 0": (GNFP + "P.group_norm_film_prelu_forward(x, gn, of, a, 0, 1e-5)",
                                           r"num_groups must be >= 1"),
    "group_norm_film_prelu gain [B, C - 1]": (GNFP + "P.group_norm_film_prelu_forward(x, gn[:, :5], of, a, 3, 1e-5)",
                                              r"gain must be \[B, C\]"),
    "group_norm_film_prelu prelu [2]": (GNFP + "P.group_norm_film_prelu_forward(x, gn, of, a[:2], 3, 1e-5)",
                                        r"prelu_weight must be \[1\] or \[C\]"),
    "group_norm_film_prelu stats [B, G]": (GNFP_BW + "P.group_norm_film_prelu_backward(x, x, gn, of, a, st[..., 0], 3)",
                                           r"stats must be \[B, G, 3\]"),
    "group_norm_film_prelu grad short": (GNFP_BW + "P.group_norm_film_prelu_backward(x[..., 1:], x, gn, of, a, st, 3)",
                                         r"grad must be x's shape"),
}

# Runs every case in one interpreter, each caught on its own, one JSON line per case as it finishes:
# a case that crashes the interpreter is the first one without a line.
RUNNER = """
import json, sys, torch, pyaudiok.ops
for name, (code, _) in json.load(sys.stdin).items():
    try:
        exec(code, {"torch": torch, "P": torch.ops.pyaudiok})
        result = None
    except Exception as e:
        result = [type(e).__name__, str(e).splitlines()[0]]
    print(json.dumps([name, result]), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes():
    """(each case's result, the interpreter's exit status, its stderr's tail)."""
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(CASES), capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired as e:  # a hang: the cases that finished are in the partial output
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return dict(json.loads(line) for line in stdout.splitlines()), "timeout", ""
    return dict(json.loads(line) for line in proc.stdout.splitlines()), proc.returncode, proc.stderr[-2000:]


def test_no_case_crashes_or_hangs_the_interpreter(outcomes):
    results, status, stderr = outcomes
    missing = [name for name in CASES if name not in results]
    assert status == 0 and not missing, f"exit status {status} at case {missing[:1]}: {stderr}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument_raises_a_runtime_error_naming_it(outcomes, name):
    results, status, _ = outcomes
    assert name in results, f"the interpreter died (exit status {status}) before this case finished"
    expected, result = CASES[name][1], results[name]
    if expected is None:
        assert result is None, f"raised {result}"
        return
    assert result is not None, "accepted"
    kind, message = result
    assert kind == "RuntimeError", f"{kind}: {message}"
    assert re.search(expected, message), message


# The edges of the valid ranges pass the checks and give the reference's values and gradients.

def test_rvq_decode_reads_codes_0_and_k_minus_1():
    codebooks = torch.randn(3, 5, 8)
    codes = torch.randint(0, 5, (12, 2))
    codes[0], codes[1] = 0, 4
    with pyaudiok.use_backend("cpu"):
        out = rvq_decode(codes, codebooks)
    expected = codebooks[0][codes[:, 0]].double() + codebooks[1][codes[:, 1]].double()
    assert_close("rvq_decode", out, expected, torch.float32)


def test_collar_vad_takes_orders_minus_1_to_s_minus_1():
    logits, reference = torch.randn(2, 4, 30), (torch.rand(2, 3, 30) > 0.5).float()
    order = torch.tensor([[-1, 0, 2, 1], [2, -1, -1, 0]])
    compare_with_reference(lambda lg, ref, od: collar_vad_loss(lg, ref, od, collar_frames=2.0),
                           [logits.requires_grad_(), reference, order], "cpu")


def test_gather_rows_rotary_reads_rows_0_and_r_minus_1():
    rows, index = torch.randn(10, 8).requires_grad_(), torch.randint(0, 10, (2, 3, 5))
    index[0, 0, 0], index[1, 2, 4] = 0, 9
    angles = torch.rand(5, 2, dtype=torch.float64) * 6
    compare_with_reference(gather_rows_rotary, [rows, index, angles.cos().float(), angles.sin().float(), 4], "cpu")


def test_token_attention_reads_tokens_0_and_v_minus_1():
    heads, V = 2, 4
    q, rows = torch.randn(2, heads, 3, 8).requires_grad_(), torch.randn(2 * heads * V, 8).requires_grad_()
    tokens = torch.randint(0, V, (2, 5))
    tokens[0, 0], tokens[1, 4] = 0, V - 1
    angles = torch.rand(5, 2, dtype=torch.float64) * 6
    compare_with_reference(token_attention, [q, rows, tokens, angles.cos().float(), angles.sin().float(), 4, heads],
                           "cpu")


def test_soft_rank_backward_takes_the_forwards_permutation_and_blocks():
    x = torch.tensor([[0.3, 0.3, 0.3, -1.0, 2.0, 2.0, 0.1]]).repeat(3, 1) + torch.randn(3, 7) * 0.01
    compare_with_reference(lambda t: soft_rank(t, regularization_strength=0.5), [x.requires_grad_()], "cpu")


def test_latent_attention_takes_the_largest_block_sizes():
    q, k, v = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    largest, scale = 2**20, 8**-0.5
    out, lse = torch.ops.pyaudiok.latent_attention_forward(q, k, v, None, scale, largest, largest)
    inputs = [t.double().requires_grad_() for t in (q, k, v)]
    expected = latent_attention_reference(*inputs, scale=scale)
    assert_close("out", out, expected, torch.float32)
    grad = torch.randn_like(q)
    grads = torch.ops.pyaudiok.latent_attention_backward(grad, q, k, v, out, lse, None, scale, largest, largest)
    for name, g, ref in zip("qkv", grads, torch.autograd.grad(expected, inputs, grad.double())):
        assert_close(f"d{name}", g, ref, torch.float32)
