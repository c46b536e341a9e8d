"""A frozen copy of the package at a git ref, so a benchmark measures one commit.

The working tree may change while a benchmark runs (another engineer's edits, a schema change the
template database lacks). `code_snapshot("HEAD")` extracts `etl_pipelines/` and `dagster.yaml` of
that commit with `git archive` (read-only) into a temporary directory. Processes started with it
first on PYTHONPATH and as their working directory import that copy: PYTHONPATH and the working
directory precede the editable install's import hook, which setuptools appends to sys.meta_path.
`code_snapshot("worktree")` measures the working tree as it is.
"""

import contextlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import REPO, git_commit


@dataclass(frozen=True)
class Code:
    """Where the measured package lives (`root` is None for the working tree) and what it is."""

    root: Path | None
    commit: str

    @property
    def cwd(self) -> Path:
        return self.root or REPO

    @property
    def dagster_yaml(self) -> Path:
        return (self.root or REPO) / "dagster.yaml"

    def pythonpath(self, *extra: Path) -> str:
        parts = ([str(self.root)] if self.root else []) + [str(p) for p in extra]
        return ":".join(parts)


@contextlib.contextmanager
def code_snapshot(ref: str) -> Iterator[Code]:
    if ref == "worktree":
        yield Code(None, git_commit())
        return
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "etl_pipelines", "dagster.yaml"],
        capture_output=True,
        check=True,
    ).stdout
    root = Path(tempfile.mkdtemp(prefix="etl_bench_code_"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
        yield Code(root, commit)
    finally:
        shutil.rmtree(root, ignore_errors=True)
