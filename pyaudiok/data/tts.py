"""Speech synthesised offline by a command-line synthesiser (espeak-ng, flite), cached on disk."""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["cached_synthesis"]


def cached_synthesis(directory: Path, identity: str, command: Callable[[str], Sequence[str]]) -> Path | None:
    """The WAV file of `command(output_path)` cached in `directory` under a hash of `identity` (what
    determines the audio: engine, voice, pitch, text, ...); None when synthesis fails. The file is
    written to a temporary name and renamed, so a concurrent reader never sees a partial file."""
    path = directory / f"{hashlib.sha1(identity.encode()).hexdigest()[:16]}.wav"
    if path.exists():
        return path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".wav", dir=directory)
        os.close(fd)
    except OSError:
        return None
    try:
        subprocess.run(list(command(tmp)), check=True, capture_output=True, timeout=60)
        os.replace(tmp, path)
        return path
    except (OSError, subprocess.SubprocessError):
        Path(tmp).unlink(missing_ok=True)
        return None
