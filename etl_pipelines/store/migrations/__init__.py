"""Alembic migrations of the job table (store.schema runs them; env.py is Alembic's entry point)."""
