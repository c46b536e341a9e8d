"""Streaming loads for the ETL job types: sources read in bounded batches (reader), typed by
vectorised kernels with every rejected row kept (columns, rejects), staged by COPY and merged in
one statement (stage). No Dagster here: job types in etl_pipelines/jobs/ use it."""
