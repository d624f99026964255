"""The `pyaudiok` command: `info`, `bench`, `train SYSTEM ...`, `codec encode|decode`."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path


def _cmd_info(args) -> int:
    from .info import info
    print(info())
    return 0


def _cmd_bench(args) -> int:
    import torch

    from .bench import harness, registry

    if args.device == "cuda" and not torch.cuda.is_available():
        print("pyaudiok bench: --device cuda asked, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    problem = _unwritable_outputs(args)
    if problem:
        print(f"pyaudiok bench: {problem}", file=sys.stderr)
        return 2
    harness.GPU_TIMING = args.gpu_timing
    env = harness.environment(device)
    print(f"pyaudiok bench on {env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, "
          f"triton {env['triton']}, commit {env['commit']}{', quick sizes' if args.quick else ''}"
          f"{', GPU timing ' + env['gpu_timing'] if 'gpu_timing' in env else ''}", flush=True)
    try:
        cases = list(registry.collect(device, args.quick, args.only, compiled_peers=not args.no_compile))
    except ValueError as e:
        print(f"pyaudiok bench: {e}", file=sys.stderr)
        return 2
    results, json_written = _time_cases(cases, device, env, args)
    print()
    print(harness.format_table(results))
    if not json_written:
        return 2
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        if not _write_output("--plot", args.plot, lambda: harness.write_plot(args.plot, env, results)):
            return 2
        print(f"wrote {args.plot}")
    return 0


def _time_cases(cases, device, env: dict, args) -> tuple[list, bool]:
    """Every case's results, each case's rows printed as soon as it is timed (and the JSON so far written):
    a run stopped by a time limit keeps what it measured. Stops at a failed JSON write: (results, False)."""
    from .bench import harness

    results = []
    for case in cases:
        print(f"  {case.name} {case.params} ...", flush=True)
        case_results = harness.run_case(case, device, args.min_time)
        results += case_results
        for r in case_results:
            print(f"  | {harness.format_row(r)}", flush=True)
        if args.json and not _write_output("--json", args.json, lambda: harness.write_json(args.json, env, results)):
            return results, False
    return results, True


def _write_output(flag: str, path: str, write) -> bool:
    """write(); False, with one line naming the path and the reason, when it fails for want of disk space,
    permission, its directory, ... (the previous file, if any, is left whole)."""
    try:
        write()
    except OSError as e:
        reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
        print(f"pyaudiok bench: cannot write {flag} {path}: {reason}", file=sys.stderr)
        return False
    return True


def _unwritable_outputs(args) -> str | None:
    """Why --json or --plot could not be written (checked before the minutes of timing), or None."""
    from .train.runtime import ConfigError, writable_output_dir

    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is None:
            continue
        if Path(path).is_dir():
            return f"{flag} {path} is a directory"
        try:
            writable_output_dir(Path(path).parent, f"{flag}'s directory")
        except ConfigError as e:
            return str(e)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib, which is not installed"
    if args.plot and Path(args.plot).suffix:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        formats = FigureCanvasAgg.get_supported_filetypes()
        if Path(args.plot).suffix[1:].lower() not in formats:
            return f"--plot {args.plot}: matplotlib writes {', '.join(sorted(formats))} (by the file's extension)"
    return None


# `pyaudiok train NAME ...` hands the remaining arguments to the module's main(argv).
TRAINERS = {"soundstream": "pyaudiok.train.soundstream", "perceiver-ar": "pyaudiok.train.perceiver_ar",
            "diffstride": "pyaudiok.train.diffstride", "permutation": "pyaudiok.train.permutation",
            "wavesplit": "pyaudiok.train.wavesplit", "dive": "pyaudiok.train.dive", "cola": "pyaudiok.train.cola",
            "leaf": "pyaudiok.train.leaf", "charm": "pyaudiok.train.charm", "llp": "pyaudiok.train.llp"}
# `pyaudiok generate NAME ...` hands the remaining arguments to module:function(argv).
GENERATORS = {"perceiver-ar": ("pyaudiok.train.perceiver_ar", "generate_main")}
# `pyaudiok separate|diarize ...` hand the remaining arguments to module:function(argv).
TOOLS = {"separate": ("pyaudiok.train.wavesplit", "separate_main"), "diarize": ("pyaudiok.train.dive", "diarize_main")}


def _refused(prog: str, run) -> int:
    """run()'s exit status; a run refused before it starts (an option out of range, an output
    directory that does not fit --resume, a checkpoint of another system or a damaged one) is a
    one-line error and status 2."""
    from .train.checkpoint import CheckpointError
    from .train.runtime import ConfigError

    try:
        return run() or 0
    except (ConfigError, CheckpointError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2


def _cmd_train(args) -> int:
    return _refused(f"pyaudiok train {args.system}",
                    lambda: importlib.import_module(TRAINERS[args.system]).main(args.args))


def _cmd_generate(args) -> int:
    module, function = GENERATORS[args.system]
    return _refused(f"pyaudiok generate {args.system}",
                    lambda: getattr(importlib.import_module(module), function)(args.args))


def _cmd_tool(args) -> int:
    module, function = TOOLS[args.command]
    try:
        return getattr(importlib.import_module(module), function)(args.args) or 0
    except (ValueError, OSError) as e:  # OSError: a missing, unreadable or unwritable path
        print(f"pyaudiok {args.command}: {e}", file=sys.stderr)
        return 2


def _cmd_codec(args) -> int:
    from .codec import codec
    from .codec.bitstream import CodecFormatError

    try:
        model = codec.load_model(args.checkpoint)
        if args.action == "encode":
            header = codec.encode_file(model, args.input, args.output, args.bitrate)
            print(f"{args.output}: {header.n_q} quantizers, {float(header.bitrate):.0f} bit/s, "
                  f"{header.n_frames} frames, {header.payload_bytes} payload bytes")
        else:
            header = codec.decode_file(model, args.input, args.output)
            print(f"{args.output}: {header.n_samples} samples at {header.sample_rate} Hz")
    except (CodecFormatError, ValueError, OSError) as e:  # OSError: a missing, unreadable or unwritable path
        print(f"pyaudiok codec {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyaudiok", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, devices, and the op x backend table with reasons")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("bench", help="time every backend against the reference and the peers")
    p.add_argument("--quick", action="store_true", help="smaller sizes (seconds, not minutes)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    p.add_argument("--no-compile", action="store_true",
                   help="leave out the torch.compile peers (compiling them takes seconds to minutes)")
    p.add_argument("--json", metavar="PATH", help="write one JSON row per case x candidate")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--min-time", type=_positive_float, default=1.0,
                   help="seconds of timed runs per candidate (default 1)")
    p.add_argument("--gpu-timing", choices=("queued", "isolated"), default="queued",
                   help="on a GPU: calls queued back to back, each timed by device events (default: device "
                        "time per call, as in a training loop), or a synchronisation after each call (the "
                        "latency of one call, host launch time included)")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("train", help="train a full model on embedded data (see `pyaudiok train NAME --help`)")
    p.add_argument("system", choices=sorted(TRAINERS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the trainer's own options")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("generate", help="sample from a trained model (see `pyaudiok generate NAME --help`)")
    p.add_argument("system", choices=sorted(GENERATORS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the generator's own options")
    p.set_defaults(func=_cmd_generate)
    for name, text in (("separate", "split a mixture into sources with a Wavesplit checkpoint"),
                       ("diarize", "who spoke when (RTTM on stdout) with a DIVE checkpoint")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER, help=f"see `pyaudiok {name} --help`")
        p.set_defaults(func=_cmd_tool)
    p = sub.add_parser("codec", help="encode audio to / decode audio from an .ssc file with a SoundStream checkpoint")
    p.add_argument("action", choices=("encode", "decode"))
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--checkpoint", required=True, help="training checkpoint file, or a training output directory")
    p.add_argument("--bitrate", default="6k", help="encode: target bitrate, e.g. 3k, 6kbps, 12000 (default 6k)")
    p.set_defaults(func=_cmd_codec)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        # Everything after the command is the tool's (its --help and options included): a
        # REMAINDER positional would take nothing when the first of them is an option.
        return _cmd_tool(argparse.Namespace(command=argv[0], args=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
