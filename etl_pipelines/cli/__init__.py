"""etl-jobs: dispatch jobs and look at them from the shell (also `python -m etl_pipelines.cli`).

Commands in commands.py, how things are shown in render.py.
"""

from etl_pipelines.cli.commands import cli, main

__all__ = ["cli", "main"]
