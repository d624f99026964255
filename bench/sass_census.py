"""Static census of the Triton latent-attention kernels as compiled for an H100 (sm_90), no GPU needed.

For each kernel (forward, dK/dV, dQ) and variant (the forward's `FORWARD_RESCALE`, the dK/dV
kernel's `DQ_MODE`) at the tile a GPU launch of the benchmark's size would use, it compiles the
kernel through Triton's NVIDIA backend and its bundled ptxas, as that launch would be specialised
(16-byte aligned pointers, sizes divisible by 16), and counts the SASS: FP32 math, MUFU (the exponentials), F2FP (conversions to 16 bits), HGMMA
(tensor-core ops), LDGSTS (cp.async: the key/value loads are pipelined through shared memory),
STL/LDL (register spills), REDG/ATOMG/MEMBAR (atomic adds without or with a returned value,
fences). What a kernel change does to the instruction stream, seen before a GPU can time it; a
count of static instructions, not a timing.

    python -m pyaudiok.bench.sass_census [--d 64] [--dtype bf16] [--only _fwd_kernel ...] [--json]

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
from typing import NamedTuple

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPCODES = ("FMUL", "FFMA", "FADD", "FMNMX", "MUFU", "F2FP", "HGMMA", "LDGSTS", "LDG", "STL", "LDL", "REDG", "ATOMG",
           "MEMBAR")
_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


class Kernel(NamedTuple):
    name: str             # the function in pyaudiok.kernels.latent_attention
    tile: int             # its index in _tiles(): forward, dK/dV, dQ
    pointers: tuple       # (argument, element type or None for the op's dtype)
    sizes: tuple          # int32 arguments ("*" marks one a launch at the bench size passes as a multiple of 16)
    variants: dict        # variant -> its constexprs (the module setting it stands for)


_IO = (("Q", None), ("K", None), ("V", None), ("KL", "i32"), ("IDX", "i32"))
_GRAD_IN = (("DO", None), ("LSE", "fp32"), ("DELTA", "fp32"))
KERNELS = [
    Kernel("_fwd_kernel", 0, _IO + (("O", None), ("LSE", "fp32")), ("H", "N*", "M*", "Mk*", "kv_chunk*"),
           {"always": {"LAZY_RESCALE": False}, "lazy": {"LAZY_RESCALE": True}}),  # FORWARD_RESCALE
    Kernel("_bwd_dkdv_kernel", 1, _IO + _GRAD_IN + (("DK", None), ("DV", None), ("DQ", "fp32")),
           ("H", "N*", "M*", "Mk*"), {"separate": {"ATOMIC_DQ": False}, "atomic": {"ATOMIC_DQ": True}}),  # DQ_MODE
    Kernel("_bwd_dq_kernel", 2, _IO + _GRAD_IN + (("DQ", None),), ("H", "N*", "M*", "Mk*", "kv_chunk*"),
           {"separate": {}}),
]


def _nvdisasm() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def opcode_counts(sass: str) -> collections.Counter:
    """Instructions per opcode (modifiers dropped: MUFU.EX2 counts as MUFU) in nvdisasm's output."""
    return collections.Counter(m.group(1) for m in map(_SASS_OPCODE.search, sass.splitlines()) if m)


def compile_kernel(spec: Kernel, variant: str, d: int, dtype: torch.dtype, arch: int = 90) -> dict:
    """{"tile", "shared": bytes, "instructions": total, opcode: count ...} of one kernel variant."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pyaudiok.kernels import latent_attention as kernels
    from pyaudiok.kernels.gpu import dot_precision

    tile = kernels._tiles(d, dtype, torch.device("cuda"))[spec.tile]
    kernel = getattr(kernels, spec.name)
    signature = {name: "*" + (element or _TRITON_TYPES[dtype]) for name, element in spec.pointers}
    signature.update({size.rstrip("*"): "i32" for size in spec.sizes})
    signature.update({name: "fp32" for name in ("qk_scale", "sm_scale") if name in kernel.arg_names})
    constants = {"HAS_KL": False, "HAS_IDX": False, "BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "D": d,
                 "PREC": dot_precision(dtype), **spec.variants[variant]}
    signature.update({name: "constexpr" for name in constants})
    index = {name: (kernel.arg_names.index(name),) for name in signature}
    aligned = [name for name, _ in spec.pointers] + [size.rstrip("*") for size in spec.sizes if size.endswith("*")]
    source = ASTSource(fn=kernel, signature=signature, constexprs={index[k]: v for k, v in constants.items()},
                       attrs={index[name]: [["tt.divisibility", 16]] for name in aligned})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": tile.warps, "num_stages": tile.stages,
                                       "enable_fp_fusion": True})  # as launchable() launches
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([_nvdisasm(), "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    counts = opcode_counts(sass)
    return {"tile": list(tile), "shared": compiled.metadata.shared, "instructions": sum(counts.values()),
            **{op: counts.get(op, 0) for op in OPCODES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--only", nargs="*", help="kernel names (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object {kernel: {variant: counts}}")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the kernels must be compiled")
    results = {spec.name: {variant: compile_kernel(spec, variant, args.d, DTYPES[args.dtype])
                           for variant in spec.variants}
               for spec in KERNELS if not args.only or spec.name in args.only}
    if args.json:
        print(json.dumps(results))
        return 0
    import triton
    columns = ["shared", "instructions", *OPCODES]
    print(f"latent attention kernels, d {args.d}, {args.dtype}, sm_{90}, triton {triton.__version__} "
          "(static SASS counts; tile = block_m, block_n, warps, stages)")
    print(f"{'kernel':<17}{'variant':<9}{'tile':<16}" + "".join(f"{c:>{max(7, len(c) + 1)}}" for c in columns))
    for name, variants in results.items():
        for variant, counts in variants.items():
            tile = ",".join(map(str, counts["tile"]))
            print(f"{name:<17}{variant:<9}{tile:<16}" + "".join(f"{counts[c]:>{max(7, len(c) + 1)}}" for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
