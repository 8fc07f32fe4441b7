#!/bin/bash
# Run once by the postgres image, on an empty data volume (/docker-entrypoint-initdb.d): one role and one database
# per component, each database owned by its role and closed to the others, so a service that holds one password
# reaches one database. The names are those of the URLs docker/compose.yaml builds (tests/test_docker.py checks
# that they agree); the passwords come from docker/.env through the postgres service's environment.
#
# The server runs on its Unix socket alone meanwhile; compose's health check waits for TCP, which opens after this.
set -e

# compose puts these passwords into database URLs as they are: refuse one that a URL would misread, here, with
# its name, rather than let Prefect, MLflow or the worker fail later on a mangled URL.
for name in PREFECT_DB_PASSWORD MLFLOW_DB_PASSWORD SEQCAST_DB_PASSWORD; do
    value="${!name}"
    case "$value" in
        "" | *[!A-Za-z0-9._~-]*)
            echo "init-databases: $name in docker/.env must be set and URL-safe: letters, digits and - _ . ~ only" \
                "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))')" >&2
            exit 1
            ;;
    esac
done

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v prefect_password="$PREFECT_DB_PASSWORD" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" \
    -v seqcast_password="$SEQCAST_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE seqcast LOGIN PASSWORD :'seqcast_password';
CREATE DATABASE prefect OWNER prefect;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE seqcast OWNER seqcast;
REVOKE ALL ON DATABASE prefect, mlflow, seqcast FROM PUBLIC;
-- Prefect's migrations create pg_trgm; created here, as the administrator, they find it
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
