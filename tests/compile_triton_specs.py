"""Compiles recorded Triton launch specs (tests/triton_launches.py) for a GPU target, without a GPU:
Triton's NVIDIA backend lowers to PTX and runs its bundled ptxas, so a kernel the GPU compiler
rejects fails here rather than on the first GPU machine.

    python tests/compile_triton_specs.py SPECS.json [--arch 90]
    python tests/compile_triton_specs.py ALIASED.json --written

Must run without TRITON_INTERPRET (the kernels must be JIT functions, not interpreted ones).
Prints one line per spec and exits 1 if any failed to compile. With --written, the records are
launches that passed one tensor in several slots ({"spec", "groups"}, tests/triton_launches.py):
each kernel goes through torch.compile's own analysis of the slots a kernel writes, and a group
with a written slot (or a kernel the analysis cannot read, which makes every slot written) fails."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor


def compile_one(spec: dict, arch: int) -> str | None:
    """None when the spec compiles to a cubin, else the error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        kernel = getattr(importlib.import_module(spec["module"]), spec["name"])
        source = ASTSource(fn=kernel, signature=spec["signature"], constexprs=spec["constants"])
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        return None if compiled.asm.get("cubin") else "no cubin produced"
    except Exception as e:  # the error is the result
        return f"{type(e).__name__}: {e}"[:2000]


_POINTEE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64", "i64": "int64",
            "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "i1": "bool"}


def written_slots(spec: dict, arch: int) -> set[str] | str:
    """The pointer slots torch.compile's kernel analysis counts as written, or the error."""
    import torch
    from torch._higher_order_ops import triton_kernel_wrap
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _Target:  # all the analysis asks of the (absent) GPU driver
        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

    try:
        driver.set_active(_Target())
        kernel = getattr(importlib.import_module(spec["module"]), spec["name"])
        kwargs = {}
        for name, kind in spec["signature"].items():
            if kind == "constexpr":
                kwargs[name] = spec["constants"][name]
            elif kind.startswith("*"):
                kwargs[name] = torch.empty(64, dtype=getattr(torch, _POINTEE[kind[1:]]))
            else:
                kwargs[name] = 1.5 if kind.startswith("fp") else 64
        pointers = {n for n, k in spec["signature"].items() if k.startswith("*")}
        accesses = triton_kernel_wrap.identify_accessed_tensors(kernel, kwargs, {})
        written = {dep.name for dep in accesses.read_writes.writes}
        if written == pointers and len(pointers) > 1:
            return "the analysis could not read the kernel (every slot counts as written)"
        return written
    except Exception as e:  # the error is the result
        return f"{type(e).__name__}: {e}"[:2000]


def check_written(records: list[dict], arch: int) -> int:
    failures = 0
    for record in records:
        spec, written = record["spec"], written_slots(record["spec"], arch)
        bad = written if isinstance(written, str) else [g for g in record["groups"] if set(g) & written]
        failures += bool(bad)
        print(f"{'FAIL' if bad else 'ok  '} {spec['module']}.{spec['name']} shares {record['groups']}"
              + (f"\n     written: {bad}" if bad else ""))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("specs")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--written", action="store_true", help="check shared tensors against written slots")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be JIT functions", file=sys.stderr)
        return 2
    specs = json.loads(open(args.specs).read())
    if args.written:
        return check_written(specs, args.arch)
    with ProcessPoolExecutor(args.jobs) as pool:
        errors = list(pool.map(compile_one, specs, [args.arch] * len(specs)))
    for spec, error in zip(specs, errors):
        print(f"{'FAIL' if error else 'ok  '} {spec['module']}.{spec['name']} {spec['constants']}"
              + (f"\n     {error}" if error else ""))
    return 1 if any(errors) else 0


if __name__ == "__main__":
    sys.exit(main())
