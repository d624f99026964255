"""`pyaudiok.info()`: versions, devices, what was built, and the op × backend table with the
reason each backend is or is not available."""
from __future__ import annotations

import platform

import torch

from . import _extension, backends, dispatch
from ._version import __version__


def backend_table() -> list[dict]:
    """One row per op × backend × device type: {'op', 'backend', 'device', 'available', 'reason',
    'note'} (reason: why it is not available; note: the rule by which the automatic choice passes an
    available backend over for some inputs)."""
    rows = []
    has_cuda = torch.cuda.is_available()
    for name, op in sorted(dispatch.registered_ops().items()):
        for backend in dispatch.BACKENDS:
            impl = op.impls.get(backend)
            if impl is None:
                rows.append({"op": name, "backend": backend, "device": "-", "available": False,
                             "reason": "not implemented", "note": ""})
                continue
            for device_type in impl.devices:
                reason = impl.availability(torch.device(device_type))
                if reason is None and device_type == "cuda" and not has_cuda:
                    reason = "no CUDA device visible to torch"
                note = ""
                if reason is None and impl.auto_skip is not None:  # its rule's first docstring line
                    note = "automatic choice passes it over: " + (impl.auto_skip.__doc__ or "").strip().split("\n")[0]
                rows.append({"op": name, "backend": backend, "device": device_type,
                             "available": reason is None, "reason": reason or "", "note": note})
    return rows


def info() -> str:
    build = _extension.build_info()
    lines = [
        f"pyaudiok {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, triton {backends.triton_version() or 'not available'}",
        f"devices: cpu ({torch.get_num_threads()} threads)"
        + (f", cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device"),
    ]
    if build["loaded"]:
        lines.append(f"extension: built against torch {build['torch_version']} with {build.get('compiler', '?')}; "
                     f"backends {', '.join(build['backends'])}"
                     + (f" (CUDA archs {build['cuda_archs']})" if build["cuda_archs"] else
                        f" (cuda skipped: {build['cuda_skipped_reason']})" if build["cuda_skipped_reason"] else ""))
    else:
        lines.append(f"extension: not loaded: {build['reason']}")
    forced = dispatch.requested_backend()
    lines.append(f"backend choice: {'forced to ' + forced if forced else 'automatic'}")
    lines.append("")
    rows = backend_table()
    widths = [max(len(str(r[k])) for r in rows + [{"op": "op", "backend": "backend", "device": "device"}])
              for k in ("op", "backend", "device")]
    header = f"{'op':<{widths[0]}}  {'backend':<{widths[1]}}  {'device':<{widths[2]}}  available  reason"
    lines += [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['op']:<{widths[0]}}  {r['backend']:<{widths[1]}}  {r['device']:<{widths[2]}}  "
                     f"{'yes' if r['available'] else 'no':<9}  {r['reason'] or r['note']}")
    return "\n".join(lines)
