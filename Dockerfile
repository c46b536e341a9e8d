# One image for every etl_pipelines service (webserver, daemon; workers in the production issue).
FROM python:3.11-slim

WORKDIR /opt/etl_pipelines
COPY pyproject.toml setup.cfg README.md ./
COPY etl_pipelines ./etl_pipelines
RUN pip install --no-cache-dir .
COPY workspace.yaml ./

# The production instance: PostgreSQL storage from ETL_DATABASE_URL (see dagster.yaml).
ENV DAGSTER_HOME=/opt/dagster/home
COPY dagster.yaml /opt/dagster/home/dagster.yaml
