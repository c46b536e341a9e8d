"""The errors a user can cause, importable without Dagster (the CLI catches them)."""


class NonRetryableError(Exception):
    """A failure that waiting cannot fix (bad input, a failed check): the job fails at once."""


class JobInputError(NonRetryableError, ValueError):
    """Parameters a job type cannot run with: wrong names, types or identifiers. Never retried."""


class JobTimeoutError(TimeoutError):
    """A statement ran past the job's timeout and PostgreSQL cancelled it."""


class UnknownJobTypeError(LookupError):
    """No job type by that name."""


class UnknownQueueError(ValueError):
    """A queue name that is not among the configured queues."""
