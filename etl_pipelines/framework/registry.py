"""Job types are collected from etl_pipelines/jobs/: one module each, never registered by hand."""

import functools
import importlib
import inspect
import pkgutil

from etl_pipelines.errors import UnknownJobTypeError
from etl_pipelines.framework.base import BaseJob

# dispatch()'s own keywords, and BaseJob's attributes, cannot be parameter names.
RESERVED_NAMES = {"queue", "idempotency_key"} | {name for name in dir(BaseJob) if not name.startswith("_")}


@functools.cache
def job_types() -> dict[str, type[BaseJob]]:
    """Every job type, by name, in name order."""
    import etl_pipelines.jobs

    found: dict[str, type[BaseJob]] = {}
    for module_info in pkgutil.iter_modules(etl_pipelines.jobs.__path__):
        module = importlib.import_module(f"etl_pipelines.jobs.{module_info.name}")
        classes = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseJob)
            and obj.__module__ == module.__name__
            and not inspect.isabstract(obj)
        ]
        if len(classes) != 1:
            raise TypeError(f"{module.__name__} must define exactly one BaseJob subclass")
        job_cls = classes[0]
        if job_cls.job_type() != module_info.name:
            raise TypeError(
                f"{job_cls.__name__} is named {job_cls.job_type()!r} but lives in "
                f"{module_info.name}.py; the module must be named after the job type"
            )
        clashes = sorted(set(job_cls.model_fields) & RESERVED_NAMES)
        if clashes:
            raise TypeError(f"{job_cls.__name__}: parameter name(s) {', '.join(clashes)} are reserved")
        found[job_cls.job_type()] = job_cls
    return dict(sorted(found.items()))


def get_job_type(name: str) -> type[BaseJob]:
    """The job type called `name`, or UnknownJobTypeError listing the known ones."""
    try:
        return job_types()[name]
    except KeyError:
        raise UnknownJobTypeError(
            f"unknown job type {name!r}; known job types: {', '.join(job_types())}"
        ) from None
