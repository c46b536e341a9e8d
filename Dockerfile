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

# Not root: the services write only DAGSTER_HOME (a step's scratch output in storage/, copied to
# the database and removed when the step ends) and read /opt/dagster/imports.
RUN useradd --system --uid 10001 --home-dir /opt/dagster --no-create-home etl \
    && mkdir -p /opt/dagster/home/storage /opt/dagster/imports \
    && chown -R etl /opt/dagster
USER etl
