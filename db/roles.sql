-- The function's database role: it may create tables in, and write, exactly the schemas it loads (the
-- pipeline's own, `ingest_ledger`, for its ledger, plus the schemas the contracts name), and nothing else: no
-- privilege on `public` unless a contract loads there. It owns what it creates; every other table stays out
-- of its reach (no SELECT, INSERT, UPDATE, DELETE, ALTER or DROP). The schemas are created here if missing,
-- so the role needs no CREATE on the database. Run as a superuser or the database owner; the password is
-- yours, the schemas a comma-separated list (the sample contracts load `public`):
--   psql "$ADMIN_URL" -v password="'…'" -v schemas=ingest_ledger,raw -f db/roles.sql
-- Run it again with more schemas when a contract names a new one (the role is then left as it is).
-- PostgreSQL 15+ gives PUBLIC no CREATE on `public`; on older servers a DBA revokes it:
--   REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT set_config('ingest.password', :password, false), set_config('ingest.schemas', :'schemas', false);
DO $$
DECLARE
  s text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ingest_function') THEN
    EXECUTE format('CREATE ROLE ingest_function LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION',
                   current_setting('ingest.password'));
  END IF;
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO ingest_function', current_database());
  FOREACH s IN ARRAY string_to_array(current_setting('ingest.schemas'), ',') LOOP
    s := btrim(s);
    CONTINUE WHEN s = '';
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', s);
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO ingest_function', s);
  END LOOP;
  -- A load waiting for its table behind an autovacuum cancels it after 100 ms instead of the server's second
  -- (the function sets deadlock_timeout for its load's transaction where it may). Superusers may grant it.
  IF current_setting('server_version_num')::int >= 150000 THEN
    BEGIN
      EXECUTE 'GRANT SET ON PARAMETER deadlock_timeout TO ingest_function';
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE NOTICE 'deadlock_timeout: not granted (needs a superuser); loads wait for autovacuum the server''s deadlock_timeout';
    END;
  END IF;
END $$;
SELECT set_config('ingest.password', '', false);
-- If the ledger or a target table already exists (created by someone else), grant on it explicitly:
--   GRANT SELECT, INSERT, UPDATE ON ingest_ledger.ingest_files, ingest_ledger.ingest_attempts TO ingest_function;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON raw.users TO ingest_function;   -- DELETE: replace mode
