"""Celery over Redis: the app and its worker (app), the task (task), Dagster's run launcher (launcher)."""
