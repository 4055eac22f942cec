"""Every ``s2v`` command block of the README runs as written, shrunk to a few stamps (issue 30:
the README's ``s2v train`` line once failed as written).

The blocks are read from README.md; only sizes are shrunk (nights, stamps, epochs, batch size),
never options added or removed, so that a command the README gets wrong fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: Sizes shrunk: option -> value used here.
SHRINK = {"--nights": "1", "--stamps-per-night": "400", "--epochs": "1", "--batch-size": "64"}
#: Blocks not run here, and why: installing the package (the wheel test and CI do it), a server
#: that runs until stopped (tests/test_scan*.py drive it).
NOT_RUN = ("pip install", "s2v scan", "s2v demo")


def command_blocks(text: str) -> list[list[str]]:
    """The README's ``bash`` blocks that run ``s2v``, as lists of commands (continuations
    joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        cmds = []
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "s2v":
                cmds.append(words)
        if cmds and not any(skip in block for skip in NOT_RUN):
            out.append(cmds)
    return out


def shrink(words: list[str]) -> list[str]:
    out = list(words)
    for i, w in enumerate(out[:-1]):
        if w in SHRINK:
            out[i + 1] = SHRINK[w]
    return out


def test_the_blocks_are_found() -> None:
    blocks = command_blocks(README.read_text())
    commands = [c[1] for b in blocks for c in b]
    # The commands section, the ZTF section and the training recipe at least.
    assert len(blocks) >= 3 and {"simulate", "ingest", "score", "report", "train"} <= set(commands)
    assert {"nightly", "backfill"} <= set(commands)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(command_blocks(README.read_text()))))
def test_readme_block_runs_as_written(index: int, tmp_path: Path) -> None:
    block = command_blocks(README.read_text())[index]
    env = {**os.environ, "S2V_LOG_DIR": str(tmp_path / "logs")}
    for words in block:
        cmd = [sys.executable, "-m", "s2v_batch.cli", *shrink(words)[1:]]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        assert r.returncode == 0, f"{shlex.join(words)}\n{r.stdout}\n{r.stderr}"
        out = r.stdout.strip().splitlines()
        assert out, f"{shlex.join(words)}: no summary line"
        assert not any("dask dashboard" in ln for ln in out)  # the log's, or --verbose
        # A run that succeeded leaves no ERROR in its log.
        log = max((tmp_path / "logs").glob("s2v-*.log"), key=lambda p: p.stat().st_mtime_ns)
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln]
        assert not errors, f"{shlex.join(words)}: {errors[:3]}"
