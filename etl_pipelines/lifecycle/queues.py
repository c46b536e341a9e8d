"""Named queues, ordered from most to least urgent, and the run priority each one gets."""

from collections.abc import Sequence

from etl_pipelines.errors import UnknownQueueError


def check_queue(queue: str, queues: Sequence[str]) -> str:
    """Return `queue` if it is configured, else raise UnknownQueueError naming the valid ones."""
    if queue not in queues:
        raise UnknownQueueError(
            f"unknown queue {queue!r}; configured queues (ETL_QUEUES): {', '.join(queues)}"
        )
    return queue


def priority(queue: str, queues: Sequence[str]) -> int:
    """Run priority of a queue: the first configured queue gets the highest, the last gets 0."""
    return len(queues) - 1 - list(queues).index(check_queue(queue, queues))
