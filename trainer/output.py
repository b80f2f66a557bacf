"""Writing a model directory: the sentence-transformers files plus its RARe settings, swapped in whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rare.model import RareConfig


def write_model_dir(st, rare: RareConfig, output: Path) -> None:
    """Written next to its destination, then renamed over it: a crash leaves the old model or none,
    never half of one."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    st.save(str(tmp))
    rare.save(tmp)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
