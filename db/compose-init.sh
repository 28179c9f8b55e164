#!/bin/sh
# PostgreSQL's image runs this once, on an empty data directory: the function's least-privilege role of
# db/roles.sql, with the password from the service's environment (the image's entrypoint sets no psql
# variables of its own, so db/roles.sql cannot run there unaided).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="'${INGEST_FUNCTION_PASSWORD:?set INGEST_FUNCTION_PASSWORD}'" \
  -v schemas="${INGEST_FUNCTION_SCHEMAS:?set INGEST_FUNCTION_SCHEMAS}" -f /opt/ingest-db/roles.sql
