"""Job types, one module each, named after the job type; collected by framework.registry."""

import pkgutil

from etl_pipelines.errors import UnknownJobTypeError


def names() -> list[str]:
    """Every job type's name, sorted, without importing a job module (so without Dagster).

    A module's name is its job type (framework.registry refuses any other), so listing the
    modules is enough to tell the names, e.g. to check `etl-jobs list --type`.
    """
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


def check_name(name: str) -> str:
    """Return `name` if a job type has it, else UnknownJobTypeError listing the known ones."""
    known = names()
    if name not in known:
        raise UnknownJobTypeError(f"unknown job type {name!r}; known job types: {', '.join(known)}")
    return name
