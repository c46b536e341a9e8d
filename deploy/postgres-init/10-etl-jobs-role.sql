-- The jobs' own PostgreSQL role: least privilege for the database the jobs work on.
--
-- Run by the postgres image on its first start (mounted into /docker-entrypoint-initdb.d, run by
-- psql as POSTGRES_USER in POSTGRES_DB), or by hand on an existing database (re-runnable):
--   ETL_JOBS_PASSWORD=... psql -v ON_ERROR_STOP=1 -U etl -d etl -f deploy/postgres-init/10-etl-jobs-role.sql
-- Reads from the environment (psql 15's \getenv):
--   ETL_JOBS_PASSWORD    required: the role's password (workers' ETL_TARGET_DATABASE_URL)
--   ETL_JOBS_ROLE        the role's name, default etl_jobs
--   ETL_ALLOWED_SCHEMAS  the schemas the role owns, comma-separated, default auth
--
-- What the role may do: connect to this database, and own (create, read, change, drop tables in)
-- the allowed schemas. What it may not: read or change anything in `public`, where Dagster's
-- storage and the job table live (they keep the owner role), create schemas, make temporary
-- tables, read pg_authid (no superuser), create roles or databases.
\set ON_ERROR_STOP on
\set jobs_role etl_jobs
\set allowed_schemas auth
\getenv jobs_role ETL_JOBS_ROLE
\getenv allowed_schemas ETL_ALLOWED_SCHEMAS
\getenv jobs_password ETL_JOBS_PASSWORD
\if :{?jobs_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'ETL_JOBS_PASSWORD is not set: the jobs role needs a password'; END $$;
\endif

-- Handed to the block below as settings of this session (psql does not interpolate in $$ ... $$).
SET etl.jobs_role = :'jobs_role';
SET etl.jobs_password = :'jobs_password';
SET etl.allowed_schemas = :'allowed_schemas';

DO $$
DECLARE
    jobs_role text := current_setting('etl.jobs_role');
    schemas text[] := ARRAY(
        SELECT btrim(s) FROM unnest(string_to_array(current_setting('etl.allowed_schemas'), ',')) AS s
        WHERE btrim(s) <> ''
    );
    schema_name text;
    table_name text;
BEGIN
    IF cardinality(schemas) = 0 THEN
        RAISE EXCEPTION 'ETL_ALLOWED_SCHEMAS names no schema';
    END IF;
    FOREACH schema_name IN ARRAY schemas LOOP
        -- The same rule as etl_pipelines.identifiers.allowed_table: never a catalog, never public.
        IF schema_name ~* '^pg_' OR lower(schema_name) IN ('information_schema', 'public') THEN
            RAISE EXCEPTION 'ETL_ALLOWED_SCHEMAS lists %: never a catalog, nor public (Dagster''s storage, the job table)', schema_name;
        END IF;
    END LOOP;

    IF EXISTS (SELECT FROM pg_roles WHERE rolname = jobs_role) THEN
        EXECUTE format('ALTER ROLE %I', jobs_role)
            || ' WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS'
            || format(' PASSWORD %L', current_setting('etl.jobs_password'));
    ELSE
        EXECUTE format('CREATE ROLE %I', jobs_role)
            || ' WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS'
            || format(' PASSWORD %L', current_setting('etl.jobs_password'));
    END IF;

    -- This database: connect and nothing else (PUBLIC's default TEMPORARY goes too).
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), jobs_role);
    -- public holds Dagster's storage and the job table, used by their owner alone.
    REVOKE ALL ON SCHEMA public FROM PUBLIC;

    FOREACH schema_name IN ARRAY schemas LOOP
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', schema_name, jobs_role);
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', schema_name, jobs_role);
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', schema_name);
        -- Tables made before the role existed become its own (VACUUM, REINDEX, TRUNCATE need it).
        FOR table_name IN SELECT tablename FROM pg_tables WHERE schemaname = schema_name LOOP
            EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', schema_name, table_name, jobs_role);
        END LOOP;
    END LOOP;
    -- An unqualified name resolves in the allowed schemas, never in public.
    EXECUTE format(
        'ALTER ROLE %I IN DATABASE %I SET search_path = %s',
        jobs_role, current_database(),
        (SELECT string_agg(quote_ident(s), ', ') FROM unnest(schemas) AS s)
    );
END
$$;

RESET etl.jobs_password;
