"""Compiles recorded Triton launch specs (tests/triton_launches.py) for a GPU target, without a GPU:
Triton's NVIDIA backend lowers to PTX and runs its bundled ptxas, so a kernel the GPU compiler
rejects fails here rather than on the first GPU machine.

    python tests/compile_triton_specs.py SPECS.json [--arch 90]

Must run without TRITON_INTERPRET (the kernels must be JIT functions, not interpreted ones).
Prints one line per spec and exits 1 if any failed to compile."""
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("specs")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be JIT functions", file=sys.stderr)
        return 2
    specs = json.loads(open(args.specs).read())
    with ProcessPoolExecutor(args.jobs) as pool:
        errors = list(pool.map(compile_one, specs, [args.arch] * len(specs)))
    for spec, error in zip(specs, errors):
        print(f"{'FAIL' if error else 'ok  '} {spec['module']}.{spec['name']} {spec['constants']}"
              + (f"\n     {error}" if error else ""))
    return 1 if any(errors) else 0


if __name__ == "__main__":
    sys.exit(main())
