#!/bin/sh
# Creates MLflow's database ($MLFLOW_DB) next to regtune's job store ($POSTGRES_DB),
# so the two are kept apart: separate catalogs, separate migrations, separate dumps.
#
# The postgres image runs this once, from /docker-entrypoint-initdb.d/, when the
# data volume is empty. It is idempotent, and also works against any server that
# psql can reach through PGHOST/PGPORT (tests/deploy/test_topology.py runs it
# against the PostgreSQL on 127.0.0.1:5432).
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}" "${MLFLOW_DB:?set MLFLOW_DB}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     --set db="$MLFLOW_DB" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
