"""The trainers' `--device` option, checked the same way for each: a run on a device whose
results.json records it, and an unknown device refused by the argument parser."""
import json
import math
from pathlib import Path
from typing import Callable

import pytest


def run_on(main: Callable[[list[str]], int], argv: list[str], out_dir: Path, device: str) -> dict:
    """main(argv + --device device) succeeds; its results.json (returned) says it ran on `device`,
    and every logged loss is finite."""
    assert main(argv + ["--device", device]) == 0
    result = json.loads((Path(out_dir) / "results.json").read_text())
    assert result["config"]["device"] == device
    assert all(math.isfinite(row["loss"]) for row in result.get("log", []))
    return result


def assert_unknown_device_refused(main: Callable[[list[str]], int], argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv + ["--device", "tpu"])


def check_device_option(main: Callable[[list[str]], int], argv: list[str], out_dir: Path) -> dict:
    """What every trainer's CPU test of the option checks: a run with --device cpu (run_on), and
    an unknown device refused. Returns the run's results."""
    result = run_on(main, argv, out_dir, "cpu")
    assert_unknown_device_refused(main, argv)
    return result
