-- The function's database role: it may create the tables its contracts describe and write those,
-- and nothing else. It owns what it creates; every other table stays out of its reach (no INSERT,
-- UPDATE, DELETE, ALTER or DROP). Run as a superuser or the database owner; the password is yours.
--   psql "$ADMIN_URL" -v password="'…'" -f db/roles.sql
CREATE ROLE ingest_function LOGIN PASSWORD :password NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
GRANT CONNECT ON DATABASE ingest TO ingest_function;
GRANT USAGE, CREATE ON SCHEMA public TO ingest_function;
-- If the ledger or a target table already exists (created by someone else), grant on it explicitly:
--   GRANT SELECT, INSERT, UPDATE ON ingest_files TO ingest_function;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON users TO ingest_function;   -- DELETE: replace mode
