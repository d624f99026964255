"""Static census of the Triton latent-attention kernels as compiled for an H100 (sm_90), no GPU needed.

For each kernel (forward, dK/dV, dQ) and variant (the forward's
`FORWARD_RESCALE` and `FORWARD_LOOP`, the dK/dV kernel's `DQ_MODE`) at the tile a GPU launch of the
benchmark's size would use, it compiles the kernel through Triton's NVIDIA backend and its bundled ptxas, as that launch
would be specialised (16-byte aligned pointers, sizes divisible by 16, the launch's register cap),
and counts the SASS: FP32 math, MUFU (the exponentials), F2FP (conversions to 16 bits), HGMMA
(tensor-core ops), LDGSTS (cp.async: the key/value loads are pipelined through shared memory),
STL/LDL (register spills, also counted inside loops), REDG/ATOMG/MEMBAR (atomic adds without or with
a returned value, fences), the instructions of each loop's body, the registers a thread takes (two
CTAs of 8 warps share an SM at 128 or fewer), whether the first loop's softmax can overlap the
previous PV product (no wgmma wait before its exponentials, in the TTGIR).
What a kernel change does to the instruction stream, seen before a GPU can time it; a count of
static instructions, not a timing. `--source FILE` compiles another version of the kernels'
module (e.g. `git show REV:kernels/latent_attention.py > FILE`), to compare a change with its base.

    python -m pyaudiok.bench.sass_census [--d 64] [--dtype bf16] [--only _fwd_kernel ...] [--source FILE] [--json]

Runs without TRITON_INTERPRET (the kernels are compiled, not interpreted).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
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
    tile: int             # its index in _tiles() (forward, dK/dV, dQ)
    pointers: tuple       # (argument, element type or None for the op's dtype), the kernel's first arguments
    sizes: tuple          # the int32 ones after them ("*": a multiple of 16 in a launch at the bench size)
    scalars: int          # then this many fp32 ones; the constexprs follow (the names here are for the
    variants: dict        # reader: arguments are matched by position) -- variant -> its constexprs


_IO = (("Q", None), ("K", None), ("V", None), ("KL", "i32"), ("IDX", "i32"))
_GRAD_IN = (("DO", None), ("NEG_LSE", "fp32"), ("DELTA", "fp32"))
KERNELS = [
    Kernel("_fwd_kernel", 0, _IO + (("O", None), ("LSE", "fp32")), ("H", "N*", "M*", "Mk*", "kv_chunk*"), 1,
           {"always": {"LAZY_RESCALE": False}, "lazy": {"LAZY_RESCALE": True},  # FORWARD_RESCALE
            "overlap": {"OVERLAPPED": True}}),  # FORWARD_LOOP "overlapped"
    Kernel("_bwd_dkdv_kernel", 1, _IO + _GRAD_IN + (("DK", None), ("DV", None), ("DQ", "fp32")),
           ("H", "N*", "M*", "Mk*"), 2, {"separate": {"ATOMIC_DQ": False}, "atomic": {"ATOMIC_DQ": True}}),  # DQ_MODE
    Kernel("_bwd_dq_kernel", 2, _IO + _GRAD_IN + (("DQ", None),), ("H", "N*", "M*", "Mk*", "kv_chunk*"), 2,
           {"separate": {}}),
]
# Constexprs as a launch at the bench size sets them, where a kernel takes them: N = 1 024 is a
# multiple of every query tile (no row checks). UNMASKED: earlier versions' _fwd_kernel (--source)
# took it, true where it ran its unmasked blocks too.
_LAUNCH_CONSTANTS = {"CHECK_ROWS": False, "UNMASKED": True}


def _cuda_tool(name: str) -> str:
    """One of the CUDA binaries Triton's NVIDIA backend bundles (nvdisasm, cuobjdump)."""
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_REGISTERS = re.compile(r"\bREG:(\d+)")


def registers(cubin_path: str) -> int:
    """Registers a thread of the cubin's kernel uses (cuobjdump's resource usage): with the warps, what
    decides how many CTAs share an SM (65 536 registers each)."""
    usage = subprocess.run([_cuda_tool("cuobjdump"), "-res-usage", cubin_path], capture_output=True, text=True,
                           check=True).stdout
    return int(_REGISTERS.search(usage).group(1))


def opcode_counts(sass: str) -> collections.Counter:
    """Instructions per opcode (modifiers dropped: MUFU.EX2 counts as MUFU) in nvdisasm's output."""
    return collections.Counter(m.group(1) for m in map(_SASS_OPCODE.search, sass.splitlines()) if m)


_LABEL = re.compile(r"^\s*\.(L_x_\d+):")
_BRANCH_TO = re.compile(r"\bBRA\b.*?\b(L_x_\d+)")


def loop_bodies(sass: str) -> list[collections.Counter]:
    """Opcode counts of each loop body (a label to a later branch back to it), in program order: the
    work of one iteration, which is what a change to a hot loop moves."""
    lines = sass.splitlines()
    labels, bodies = {}, []
    for i, line in enumerate(lines):
        if label := _LABEL.match(line):
            labels[label.group(1)] = i
        elif (branch := _BRANCH_TO.search(line)) and branch.group(1) in labels:
            bodies.append(opcode_counts("\n".join(lines[labels[branch.group(1)]:i + 1])))
    return bodies


_WGMMA_WAIT = "ttng.warp_group_dot_wait"


def softmax_under_mma(ttgir: str) -> bool:
    """Whether the first loop of a kernel's TTGIR computes exponentials (its softmax) before it first
    waits for a wgmma: then the wgmma issued last in the previous iteration (the PV product) is still
    running on the tensor cores meanwhile. False where the loop has no exponential."""
    body = ttgir[ttgir.index("scf.for"):] if "scf.for" in ttgir else ""
    exp2, wait = body.find("math.exp2"), body.find(_WGMMA_WAIT)
    return exp2 >= 0 and (wait < 0 or exp2 < wait)


def _kernels_module(path: str | None):
    """pyaudiok.kernels.latent_attention, or the same module from another file (an earlier version, to
    compare with)."""
    from pyaudiok.kernels import latent_attention
    if path is None:
        return latent_attention
    spec = importlib.util.spec_from_file_location("pyaudiok.kernels._census_variant", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its relative imports resolve in pyaudiok.kernels
    spec.loader.exec_module(module)
    return module


def compile_kernel(spec: Kernel, variant: str, d: int, dtype: torch.dtype, arch: int = 90,
                   source_path: str | None = None) -> dict:
    """{"tile", "shared": bytes, "instructions": total, "loops": [per-iteration instructions], opcode:
    count ...} of one kernel variant, from `source_path` instead of the package's module if given;
    None where that kernel has no such variant (an earlier version without the flag it turns on)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pyaudiok.kernels.gpu import dot_precision

    kernels = _kernels_module(source_path)

    tile = kernels._tiles(d, dtype, torch.device("cuda"))[spec.tile]
    kernel = getattr(kernels, spec.name)
    types = (["*" + (element or _TRITON_TYPES[dtype]) for _, element in spec.pointers] + ["i32"] * len(spec.sizes)
             + ["fp32"] * spec.scalars)
    signature = dict(zip(kernel.arg_names, types))
    multiples_of_16 = [True] * len(spec.pointers) + [size.endswith("*") for size in spec.sizes]
    aligned = [name for name, flag in zip(kernel.arg_names, multiples_of_16) if flag]
    constants = {"HAS_KL": False, "HAS_IDX": False, "BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "D": d,
                 "PREC": dot_precision(dtype), **_LAUNCH_CONSTANTS}
    constants = {name: value for name, value in constants.items() if name in kernel.arg_names}
    flags = {name: False for flags in spec.variants.values() for name in flags}  # the other variants' off
    for name, value in {**flags, **spec.variants[variant]}.items():  # a flag the kernel does not take counts as off
        if name in kernel.arg_names:
            constants[name] = value
        elif value:
            return None
    signature.update({name: "constexpr" for name in constants})
    index = {name: (kernel.arg_names.index(name),) for name in signature}
    source = ASTSource(fn=kernel, signature=signature, constexprs={index[k]: v for k, v in constants.items()},
                       attrs={index[name]: [["tt.divisibility", 16]] for name in aligned})
    options = {"num_warps": tile.warps, "num_stages": tile.stages, "enable_fp_fusion": True}  # as launchable()
    if constants.get("OVERLAPPED"):  # and launch_forward's register cap
        with kernels.settings_set(FORWARD_LOOP="overlapped", FORWARD_RESCALE="always"):
            options.update(kernels._forward_loop_for(d, dtype, torch.device("cuda"))[1])
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([_cuda_tool("nvdisasm"), "-c", cubin.name], capture_output=True, text=True,
                              check=True).stdout
        regs = registers(cubin.name)
    counts, loops = opcode_counts(sass), loop_bodies(sass)
    return {"tile": list(tile), "registers": regs, "shared": compiled.metadata.shared,
            "instructions": sum(counts.values()), "loops": [sum(body.values()) for body in loops],
            "loop_spills": sum(body["STL"] + body["LDL"] for body in loops),
            "overlap": softmax_under_mma(compiled.asm["ttgir"]),
            **{op: counts.get(op, 0) for op in OPCODES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--only", nargs="*", help="kernel names (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object {kernel: {variant: counts}}")
    parser.add_argument("--source", help="the kernels' module from this file instead (e.g. an earlier commit's "
                                         "kernels/latent_attention.py, from git show)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the kernels must be compiled")
    results = {}
    for spec in KERNELS:
        if not args.only or spec.name in args.only:
            counts = {variant: compile_kernel(spec, variant, args.d, DTYPES[args.dtype], source_path=args.source)
                      for variant in spec.variants}
            results[spec.name] = {variant: c for variant, c in counts.items() if c is not None}
    if args.json:
        print(json.dumps(results))
        return 0
    import triton
    columns = ["overlap", "registers", "shared", "instructions", "loop_spills", *OPCODES]
    source = args.source or "pyaudiok.kernels.latent_attention"
    print(f"latent attention kernels ({source}), d {args.d}, {args.dtype}, sm_90, triton {triton.__version__} "
          "(static SASS counts; tile = block_m, block_n, warps, stages; loops: instructions per iteration; "
          "overlap: the softmax runs while the previous PV wgmma may, from the TTGIR; loop_spills: STL + LDL in loops)")
    print(f"{'kernel':<17}{'variant':<9}{'tile':<13}{'loops':<15}" + "".join(f"{c:>{max(7, len(c) + 1)}}"
                                                                              for c in columns))
    for name, variants in results.items():
        for variant, counts in variants.items():
            tile, loops = (",".join(map(str, counts[key])) for key in ("tile", "loops"))
            print(f"{name:<17}{variant:<9}{tile:<13}{loops:<15}" + "".join(f"{counts[c]:>{max(7, len(c) + 1)}}"
                                                                            for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
