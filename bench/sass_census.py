"""Static census of the Triton latent-attention forward as compiled for an H100 (sm_90), no GPU needed.

For each forward variant (`kernels.latent_attention.FORWARD_RESCALE`) at the tile a GPU launch of
the benchmark's size would use, it compiles the kernel through Triton's NVIDIA backend and its
bundled ptxas, as that launch would be specialised (16-byte aligned pointers, sizes divisible by
16), and counts the SASS: FP32 math, MUFU (the exponentials), F2FP (conversions to 16 bits), HGMMA
(tensor-core ops), LDGSTS (cp.async: the key/value loads are pipelined through shared memory) and
STL/LDL (register spills). What a kernel change does to the instruction stream, seen before a GPU
can time it; a count of static instructions, not a timing.

    python -m pyaudiok.bench.sass_census [--d 64] [--dtype bf16] [--json]

Runs without TRITON_INTERPRET (the kernels are compiled, not interpreted).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VARIANTS = {"always": {"LAZY_RESCALE": False}, "lazy": {"LAZY_RESCALE": True}}  # FORWARD_RESCALE
OPCODES = ("FMUL", "FFMA", "FADD", "FMNMX", "FSEL", "MUFU", "F2FP", "HGMMA", "LDGSTS", "LDG", "STL", "LDL")
_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_ALIGNED = ("Q", "K", "V", "KL", "IDX", "O", "LSE", "N", "M", "Mk", "kv_chunk")  # as a launch at N 1 024, M 65 536
_SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def _nvdisasm() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def opcode_counts(sass: str) -> collections.Counter:
    """Instructions per opcode (modifiers dropped: MUFU.EX2 counts as MUFU) in nvdisasm's output."""
    return collections.Counter(m.group(1) for m in map(_SASS_OPCODE.search, sass.splitlines()) if m)


def compile_forward(d: int, dtype: torch.dtype, variant: str, arch: int = 90) -> dict:
    """{"shared": bytes, "instructions": total, opcode: count ...} of the forward kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pyaudiok.kernels import latent_attention as kernels
    from pyaudiok.kernels.gpu import dot_precision

    tile = kernels._tiles(d, dtype, torch.device("cuda"))[0]
    kernel = kernels._fwd_kernel
    element = _TRITON_TYPES[dtype]
    signature = {"Q": f"*{element}", "K": f"*{element}", "V": f"*{element}", "KL": "*i32", "IDX": "*i32",
                 "O": f"*{element}", "LSE": "*fp32", "H": "i32", "N": "i32", "M": "i32", "Mk": "i32",
                 "kv_chunk": "i32", "qk_scale": "fp32"}
    constants = {"HAS_KL": False, "HAS_IDX": False, "BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "D": d,
                 "PREC": dot_precision(dtype), **VARIANTS[variant]}
    signature.update({name: "constexpr" for name in constants})
    index = {name: (kernel.arg_names.index(name),) for name in signature}
    source = ASTSource(fn=kernel, signature=signature, constexprs={index[k]: v for k, v in constants.items()},
                       attrs={index[name]: [["tt.divisibility", 16]] for name in _ALIGNED})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": tile.warps, "num_stages": tile.stages,
                                       "enable_fp_fusion": True})  # as launchable() launches
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([_nvdisasm(), "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    counts = opcode_counts(sass)
    return {"shared": compiled.metadata.shared, "instructions": sum(counts.values()),
            **{op: counts.get(op, 0) for op in OPCODES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--json", action="store_true", help="one JSON object {variant: counts}")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the kernels must be compiled")
    results = {variant: compile_forward(args.d, DTYPES[args.dtype], variant) for variant in VARIANTS}
    if args.json:
        print(json.dumps(results))
        return 0
    columns = ["shared", "instructions", *OPCODES]
    print(f"latent attention forward, d {args.d}, {args.dtype}, sm_90 (static SASS counts)")
    print(f"{'variant':<8}" + "".join(f"{c:>13}" for c in columns))
    for variant, counts in results.items():
        print(f"{variant:<8}" + "".join(f"{counts[c]:>13}" for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
