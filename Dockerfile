# One image for every etl_pipelines service (webserver, daemon, workers, metrics).
FROM python:3.11-slim

WORKDIR /opt/etl_pipelines
COPY pyproject.toml setup.cfg README.md ./
COPY etl_pipelines ./etl_pipelines
RUN pip install --no-cache-dir .
COPY workspace.yaml ./

# The production instance (see dagster.yaml): PostgreSQL storage and the job table from
# ETL_DATABASE_URL, the Celery run launcher on ETL_REDIS_URL.
ENV DAGSTER_HOME=/opt/dagster/home
COPY dagster.yaml /opt/dagster/home/dagster.yaml
