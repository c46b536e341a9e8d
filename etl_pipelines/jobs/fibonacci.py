from typing import ClassVar

from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext


class Fibonacci(BaseJob):
    """Compute the n-th Fibonacci number (CPU only: the trivial job of tests and benchmarks)."""

    queue: ClassVar[str] = "low"

    # F(20000) has 4180 digits, under Python's 4300-digit int-to-text limit for the JSON result.
    n: int = Field(ge=0, le=20_000, description="Which Fibonacci number: F(0) = 0, F(1) = 1.")

    def handle(self, ctx: JobContext) -> int:
        a, b = 0, 1
        for _ in range(self.n):
            a, b = b, a + b
        return a
