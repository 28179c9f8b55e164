"""PostgreSQL adapter: tables described with SQLAlchemy Core, data moved with psycopg's COPY.

The ledger (``ingest_files``) records every delivery's outcome. A partial unique index allows one
``loaded`` row per target table and content MD5: the load and its ledger row commit in one transaction,
so the same content loads into a table exactly once even when deliveries race (the loser waits on the
index, then skips); the same bytes meant for another table load there. A rejection is claimed too: the
rejection of one object's content under one contract is written once (``record_rejection``), however many
deliveries of it reject it at the same moment.

Lock order, the same for every load, so that loads running at once never deadlock:
1. the target table, every lock the load will need on it (evolution's ACCESS EXCLUSIVE, a big first load's
   ACCESS EXCLUSIVE, a replace's or an upsert's SHARE ROW EXCLUSIVE), each asked for as the load's first
   lock of that strength on the table, and none after step 2;
2. the ledger row last, just before the commit: its unique index makes a second load of the same content
   wait there for the first one, which by then holds every lock it needs and waits for nobody.
A rejection, a skip or a failure takes no table lock at all. A load that waits for its table until its
deadline is cancelled and fails with ``TableBusy`` (reason ``table_busy``), naming what held the table.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql as pg

if TYPE_CHECKING:
    from sqlalchemy.util.typing import TupleAny

from ..contract import ATTEMPTS_TABLE, DEFAULT_SCHEMA, LEDGER_TABLE, PIPELINE_SCHEMA, Contract, pipeline_schema
from ..deadlines import awaited, call_at, in_thread
from . import evolution
from .evolution import ContractTableMismatch
from .network import DATABASE_CONNECT_TIMEOUT_SECONDS, ServiceUnreachable, kind_of
from .tables import (
    attempts,
    ledger,
    quoted,
    quoted_target,
    sql_identifier,
    staging_table,
    target_schema,
    target_table,
)

#: A first load into an empty table at least this big COPYs without the table's indexes and builds them after.
BULK_LOAD_BYTES = 16 * 1024 * 1024
#: How many bytes of rows may wait for the COPY (the caller goes on meanwhile; past it, the caller waits).
#: PostgreSQL takes rows about as fast as they come, so the queue is mostly full: 32 MB made a 5M load's peak
#: RSS 282-296 MB, 8 MB 246-251 MB, in the same time (10.2-11.5 s both).
QUEUED_BYTES = 8 * 1024 * 1024
#: PostgreSQL's work_mem for the MERGE of an upsert (this transaction only).
MERGE_WORK_MEM = "64MB"
#: The statistics target of the ANALYZE of staged keys before the MERGE: 300 times it rows are sampled.
STAGING_STATISTICS_TARGET = 10
#: An upsert of at least this many bytes into a table with rows stages them in an unlogged table (when the
#: server runs parallel workers), so that the rows new or changed can be found by a parallel join before the
#: MERGE (see Load._changed_rows).
PARALLEL_STAGING_BYTES = 16 * 1024 * 1024
#: The parallel join pays when fewer than this share of the staged rows are new or changed (a sample of
#: about SAMPLE_PAGES pages, at most SAMPLE_ROWS rows, decides): it costs ~0.6 s per million staged rows
#: and saves the MERGE ~1 s per million rows it need not join.
CHANGED_SHARE_FOR_PREFILTER = 0.3
SAMPLE_PAGES = 40
SAMPLE_ROWS = 2000
#: How long the watchdog may spend, at the deadline, asking the server what the load waits for.
BLOCKER_LOOKUP_SECONDS = 1.0
#: How long a load waits for a lock before PostgreSQL looks for a deadlock (its default: a second). That look
#: is also what cancels an autovacuum holding the lock: after a big load autovacuum comes to its table, and the
#: next load into that table (a MERGE's lock) waited 940 ms for it in one of eight upsert runs profiled with
#: ``make bench``'s setup. Set for each connection where the role may (superusers; db/roles.sql grants it
#: from PostgreSQL 15).
DEADLOCK_TIMEOUT = "100ms"


@dataclass(frozen=True)
class DeadAttempt:
    """An earlier delivery of the same message and object that never answered."""

    id: int
    receive_count: int | None
    request_id: str | None
    started_at: Any  # datetime
    progress_at: Any  # datetime | None: its last heartbeat
    rows_read: int | None
    bytes_read: int | None
    size_bytes: int | None


@dataclass(frozen=True)
class AttemptsSoFar:
    """What the deliveries of one message and object before this one came to."""

    this: int  # this attempt's id
    died_now: list[DeadAttempt]  # found unanswered by this delivery, to report (record_death closes each)
    earlier: int  # every earlier attempt
    died: int  # of which died (found now, or by a delivery before)


@dataclass(frozen=True)
class EarlierOutcome:
    """A ledger row that decides a new delivery: the load of the same content into the same table, or the
    rejection of the same object and content under the same contract."""

    id: int
    status: str
    bucket: str
    object_key: str
    reason: str | None


class DatabaseUnreachable(ServiceUnreachable):
    """PostgreSQL did not accept a connection (down, restarting, unknown host, wrong password, TLS)."""

    def __init__(self, detail: str):
        super().__init__("PostgreSQL", detail, kind_of(detail))


def _connect(database_url: str, connect_timeout: int) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(database_url, connect_timeout=connect_timeout, application_name="ingest")
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(" ".join(str(exc).split())) from exc
    _wait_less_for_autovacuum(conn)
    return conn


def _wait_less_for_autovacuum(conn: psycopg.Connection[Any]) -> None:
    """DEADLOCK_TIMEOUT for the connection's session, where the role may set it (else the server's stays):
    once per connection, not per load (the pool keeps connections across files)."""
    if conn.info.server_version >= 150000:
        may = "has_parameter_privilege('deadlock_timeout', 'SET')"
    else:
        may = "current_setting('is_superuser') = 'on'"
    # one round trip: set_config(..., false) is SET for the session, asked for only where it is allowed
    conn.execute(f"SELECT CASE WHEN {may} THEN set_config('deadlock_timeout', %s, false) END", (DEADLOCK_TIMEOUT,))  # type: ignore[arg-type]
    conn.commit()


class SchemaMissing(RuntimeError):
    """A schema a contract names (or the pipeline's own) does not exist, and the function may not create it."""


class Database:
    def __init__(
        self, database_url: str, connect_timeout: int = DATABASE_CONNECT_TIMEOUT_SECONDS, schema: str | None = None
    ):
        #: the pipeline's own schema: ledger, attempts, big upserts' staging tables (INGEST_SCHEMA)
        self.schema = schema or pipeline_schema(os.environ)
        # libpq parses the URL (or key=value string) itself, exactly as psql would; SQLAlchemy only
        # pools the connections it makes.
        self.engine = sa.create_engine(
            "postgresql+psycopg://",
            creator=lambda: _connect(database_url, connect_timeout),
            pool_size=1,
            max_overflow=4,
            pool_pre_ping=True,
            execution_options={"schema_translate_map": {PIPELINE_SCHEMA: self.schema}},
        )
        self._ready_tables: set[str] = set()
        self._lock = threading.Lock()
        # table → fingerprint of the contract it was last found to match (checked once per warm runtime)
        self._matching: dict[str, str] = {}

    def ensure_tables(self, contract: Contract | None = None) -> None:
        """Create the ledger and the contract's table when absent. Made once per process, then only looked
        for (one cheap query): a warm runtime outlives tables dropped meanwhile (a developer starting
        afresh), and makes them again rather than failing every file on a table that is gone."""
        own = [f"{sql_identifier(self.schema)}.{sql_identifier(t)}" for t in (LEDGER_TABLE, ATTEMPTS_TABLE)]
        wanted = own + ([quoted_target(contract)] if contract else [])
        if all(t in self._ready_tables for t in wanted) and self._all_exist(wanted):
            return
        made: Contract | None = None  # the contract whose table this call made
        with self._lock, self.engine.begin() as conn:
            # Serialize DDL across concurrent functions: CREATE TABLE IF NOT EXISTS can still race.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('ingest.ddl'))"))
            _ensure_schema(conn, self.schema, "the pipeline's own schema (INGEST_SCHEMA)")
            _move_ledger_from_public(conn, self.schema)
            ledger.create(conn, checkfirst=True)
            attempts.create(conn, checkfirst=True)
            _migrate_ledger(conn, self.schema)
            if contract is not None:
                if contract.schema != DEFAULT_SCHEMA:
                    _ensure_schema(conn, contract.schema, f"contract {contract.name}'s schema")
                if not sa.inspect(conn).has_table(contract.table, schema=target_schema(contract)):
                    target_table(contract).create(conn)
                    made = contract
        if made is not None:  # made from this very contract: no need to compare them
            self._matching[made.target] = made.fingerprint
        self._ready_tables.update(wanted)

    def _all_exist(self, tables: list[str]) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT count(to_regclass(t)) FROM unnest(CAST(:tables AS text[])) AS t"), {"tables": tables}
            ).scalar_one()
        if found == len(tables):
            return True
        self._ready_tables.clear()  # something was dropped: make what is missing, and compare the rest again
        self._matching.clear()
        return False

    def earlier_outcome(
        self, md5: str, table: str, bucket: str, key: str, contract_sha256: str
    ) -> EarlierOutcome | None:
        """The load of this content into ``table`` if there was one, else the rejection of this object with
        this content under this very contract (one query before each file)."""
        self.ensure_tables()
        c = ledger.c
        loaded = (c.status == "loaded") & (c.table_name == table)
        rejected = (
            (c.status == "rejected")
            & (c.bucket == bucket)
            & (c.object_key == key)
            & (c.contract_sha256 == contract_sha256)
        )
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(c.id, c.status, c.bucket, c.object_key, c.reason)
                .where(c.md5 == md5, loaded | rejected)
                .order_by((c.status == "loaded").desc(), c.id)
                .limit(1)
            ).first()
        return EarlierOutcome(*row) if row else None

    def record(self, entry: Mapping[str, Any], until: float | None = None) -> int:
        """Write one ledger row on its own (outcomes other than a load), by ``until`` (a ``time.monotonic()``
        value: the invocation's end) at the latest: a write still waiting then (for a lock on the ledger) is
        cancelled, and the caller still has the moment to log the outcome and publish its receipt."""
        self.ensure_tables()
        with self.engine.begin() as conn:
            _statement_timeout(conn, until)
            return int(conn.execute(sa.insert(ledger).values(**entry).returning(ledger.c.id)).scalar_one())

    def begin_attempt(
        self, message_id: str, receive_count: int | None, bucket: str, key: str, request_id: str | None
    ) -> AttemptsSoFar:
        """Record that a delivery of ``message_id`` (its ``receive_count``-th) begins on this object, and
        return what the ones before it came to: those still open never answered (the queue's visibility timeout
        outlasts the function's timeout, so an open attempt of a message received again is over). The caller
        publishes each one's receipt, then records it (``record_death``, which closes it): a delivery that dies
        in between leaves it open for the next one, so a death is never lost, and on record once."""
        self.ensure_tables()
        a = attempts.c
        mine = (a.message_id == message_id) & (a.bucket == bucket) & (a.object_key == key)
        with self.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            dead = conn.execute(
                sa.select(
                    a.id,
                    a.receive_count,
                    a.request_id,
                    a.started_at,
                    a.progress_at,
                    a.rows_read,
                    a.bytes_read,
                    a.size_bytes,
                ).where(mine, a.finished_at.is_(None))
            ).all()
            earlier, died = conn.execute(
                sa.select(
                    sa.func.count(), sa.func.count().filter((a.outcome == "died") | a.finished_at.is_(None))
                ).where(mine)
            ).one()
            this = conn.execute(
                sa.insert(attempts)
                .values(
                    message_id=message_id,
                    receive_count=receive_count,
                    bucket=bucket,
                    object_key=key,
                    request_id=request_id,
                )
                .returning(a.id)
            ).scalar_one()
        dead_attempts = sorted((DeadAttempt(*row) for row in dead), key=lambda d: d.started_at)
        return AttemptsSoFar(int(this), dead_attempts, int(earlier), int(died))

    def record_death(self, attempt_id: int, entry: Mapping[str, Any], until: float | None = None) -> bool:
        """Close a dead attempt and write its ledger row, in one transaction: the death is on record exactly
        once, whoever finds it; False (nothing written) if another delivery recorded it already."""
        self.ensure_tables()
        with self.engine.begin() as conn:
            _statement_timeout(conn, until)
            closed = conn.execute(
                sa.update(attempts)
                .where(attempts.c.id == attempt_id, attempts.c.finished_at.is_(None))
                .values(finished_at=sa.func.now(), outcome="died")
                .returning(attempts.c.id)
            ).first()
            if closed is None:
                return False
            conn.execute(sa.insert(ledger).values(**entry))
        return True

    def attempt_progress(self, attempt_id: int, rows_read: int, bytes_read: int, size_bytes: int | None) -> None:
        """The attempt's heartbeat: how far it got, should it never answer."""
        self._close_or_update(
            attempt_id, progress_at=sa.func.now(), rows_read=rows_read, bytes_read=bytes_read, size_bytes=size_bytes
        )

    def end_attempt(self, attempt_id: int, outcome: str) -> None:
        """The attempt answered (``outcome``: its receipt's status)."""
        self._close_or_update(attempt_id, finished_at=sa.func.now(), outcome=outcome)

    def _close_or_update(self, attempt_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            conn.execute(
                sa.update(attempts)
                .where(attempts.c.id == attempt_id, attempts.c.finished_at.is_(None))
                .values(**values)
            )

    def record_rejection(self, entry: Mapping[str, Any], until: float | None = None) -> EarlierOutcome | None:
        """Write a ``rejected`` row, unless this object's content was rejected under this contract already
        (then that earlier row, and nothing is written). Deliveries of one file rejecting it at the same
        moment take turns on a transaction-level advisory lock named after the object, its MD5 and the
        contract, and each looks again once it holds it: one row, whatever the timing. A rejection under
        no contract (no_contract, ambiguous_contract, invalid_key) is written every time, as before."""
        if not entry.get("contract_sha256"):
            self.record({**entry, "status": "rejected"}, until)
            return None
        self.ensure_tables()
        claim = "ingest.rejected:{bucket}/{object_key}:{md5}:{contract_sha256}".format(**entry)
        with self.engine.begin() as conn:
            _statement_timeout(conn, until)
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(claim, 0))))
            earlier = conn.execute(
                self._earlier_rejection(entry["md5"], entry["bucket"], entry["object_key"], entry["contract_sha256"])
            ).first()
            if earlier is not None:
                return EarlierOutcome(*earlier)
            conn.execute(sa.insert(ledger).values(**{**entry, "status": "rejected"}))
        return None

    @staticmethod
    def _earlier_rejection(md5: str, bucket: str, key: str, contract_sha256: str) -> sa.Select[Any]:
        c = ledger.c
        return (
            sa.select(c.id, c.status, c.bucket, c.object_key, c.reason)
            .where(
                c.md5 == md5,
                c.status == "rejected",
                c.bucket == bucket,
                c.object_key == key,
                c.contract_sha256 == contract_sha256,
            )
            .order_by(c.id)
            .limit(1)
        )

    def begin_load(
        self, contract: Contract, md5: str | None, deadline: float | None = None, size_bytes: int = 0
    ) -> Load:
        """The load of one file: its transaction open, its table ready; the COPY open once ``md5`` is given
        (here, or later to ``Load.start``)."""
        self.ensure_tables(contract)
        evolve = self._matching.get(contract.target) != contract.fingerprint
        return Load(
            self.engine,
            contract,
            md5,
            deadline,
            evolve=evolve,
            matched=self._matched,
            size_bytes=size_bytes,
            schema=self.schema,
        )

    def _matched(self, contract: Contract, matches: bool) -> None:
        """A load found (or made) the table to match its contract; or failed, so check again next time."""
        if matches:
            self._matching[contract.target] = contract.fingerprint
        else:
            self._matching.pop(contract.target, None)

    def dispose(self) -> None:
        self.engine.dispose()


def _statement_timeout(conn: sa.Connection, until: float | None) -> None:
    """Cancel this transaction's statements still running at ``until`` (a ``time.monotonic()`` value)."""
    if until is not None:
        left_ms = max(1, int((until - time.monotonic()) * 1000))
        conn.execute(sa.text(f"SET LOCAL statement_timeout = {left_ms}"))


class LoadCancelled(RuntimeError):
    """The load's deadline passed: its statements were cancelled and nothing of it commits."""


class TableBusy(LoadCancelled):
    """The load waited for a lock (on its table, or for another load's row) until its deadline: another
    session held it the whole time. Nothing of the load commits; a later delivery will find it free."""

    def __init__(self, table: str, waited_for: str):
        super().__init__(f"table {table} was busy until the load's deadline: {waited_for}")
        self.table, self.waited_for = table, waited_for


def _busy_at_deadline(method: Callable[..., Any]) -> Callable[..., Any]:
    """Whatever ends a step of the load, once the watchdog found it waiting for a lock at the deadline, is
    raised as TableBusy (the cancelled statement's error is its cause)."""

    @functools.wraps(method)
    def step(self: Load, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except BaseException as exc:
            if self.waited_for is not None and not isinstance(exc, TableBusy):
                raise TableBusy(self.contract.target, self.waited_for) from exc
            raise

    return step


class Load:
    """The unit of work around one file; everything commits together with the ledger row, or nothing does.

    How rows reach the target depends on the load mode (chosen at the start, before the rows stream):
    - append: COPY straight into the target;
    - replace: lock the target against other writers (readers go on) until commit, DELETE its rows, then COPY
      straight into it: replaces of one table take turns, and the table holds exactly the rows of the one
      that committed last, never a mix;
    - upsert into an empty target (checked under a lock that keeps other writers out until commit):
      COPY straight into it, since there is nothing to update;
    - upsert into a target with rows: COPY into a staging table, then at commit MERGE it into the target
      under a lock that keeps other writers out for that moment (INSERT … ON CONFLICT DO UPDATE on
      PostgreSQL before 15); unchanged rows are left as they were. A big upsert stages into an unlogged
      table, whose new and changed rows a parallel join finds first (see _changed_rows).
    The lineage column ``_ingest_md5`` takes its default from the transaction setting ``ingest.md5`` (in a
    big first load, from a constant for the time of the COPY: see _constant_lineage_default).
    """

    def __init__(
        self,
        engine: sa.Engine,
        contract: Contract,
        md5: str | None,
        deadline: float | None = None,
        evolve: bool = True,
        matched: Callable[[Contract, bool], None] | None = None,
        size_bytes: int = 0,
        schema: str = PIPELINE_SCHEMA,
    ):
        self.contract = contract
        self._schema = schema  # the pipeline's own: where a big upsert's unlogged staging table lies
        self.md5 = md5
        self.target = target_table(contract)
        self.staging = staging_table(contract)  # an unlogged one instead for a big upsert (_create_staging)
        self._staging_unlogged = False
        self.schema_changes: list[str] = []  # the additive DDL this load applied
        self._matched = matched or (lambda _contract, _matches: None)
        self._size_bytes = size_bytes
        self._engine = engine
        self._bulk = False  # a big first load: the empty target is this transaction's alone (ACCESS EXCLUSIVE)
        self._rebuild: list[str] = []  # what a bulk COPY took from the target: its keys, indexes, lineage default
        self._conn = engine.connect()
        self._transaction = self._conn.begin()
        # At the deadline, whatever statement the load is in (a lock wait, the COPY, the MERGE) is cancelled
        # on the server, so that the caller can roll back and record a timeout while it still has time.
        self.cancelled = False
        self.waited_for: str | None = None  # what the load waited for when the watchdog cancelled it, if a lock
        # The watchdog's cancel and the end of the load exclude each other: once the connection is released
        # (back to the pool, serving someone else) no cancel is sent to it (see _release).
        self._release_lock = threading.Lock()
        self._released = False
        self._cancel_sent = False
        self._watchdog = call_at(deadline, self._cancel)
        self._copy_open = False
        self._copied = 0
        self.rows_loaded = 0
        # Blocks on their way to PostgreSQL, at most QUEUED_BYTES of them (memory stays flat): room for a slow
        # moment of the server without stopping the caller.
        self._blocks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._queued = 0
        self._dequeued = threading.Condition()
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        try:
            locked = self._evolve(engine) if evolve else False
            self.strategy = self._choose_strategy(locked)
            if self.strategy == "staging":
                self._create_staging()
            if md5 is not None:
                self.start(md5)
        except BaseException as exc:
            self._disarm()
            self._transaction.rollback()
            self._release()
            if self.waited_for is not None and not isinstance(exc, TableBusy):
                raise TableBusy(contract.target, self.waited_for) from exc
            raise

    @_busy_at_deadline
    def start(self, md5: str) -> None:
        """Name the rows' file (the lineage column's default) and open the COPY. A load made without its
        MD5 (the file still being hashed) has its table ready, evolved and locked as it needs, meanwhile."""
        self.md5 = md5
        conn = self._conn
        conn.execute(sa.select(sa.func.set_config("ingest.md5", md5, True)))
        if self._bulk:
            self._rebuild += self._constant_lineage_default(md5)
        into = self.staging if self.strategy == "staging" else self.target
        driver = conn.connection.driver_connection
        name = sql.Identifier(*([into.schema] if into.schema else []), into.name)
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
            name, sql.SQL(", ").join(sql.Identifier(n) for n in self.contract.column_names)
        )
        self._cursor = driver.cursor()  # type: ignore[union-attr]
        self._copy_context = self._cursor.copy(statement)
        self._copy = self._copy_context.__enter__()
        self._copy_open = True

    def _evolve(self, engine: sa.Engine) -> bool:
        """Compare the contract with the live table; apply additive differences in this transaction and
        refuse breaking ones with ContractTableMismatch. Whether this transaction now holds ACCESS EXCLUSIVE
        on the table.

        The first look is taken in a transaction of its own, so that this one holds no lock on the table
        yet. Changes are then made under ACCESS EXCLUSIVE, asked for before any other lock (the ALTER needs
        it anyway; asking for it first lets PostgreSQL queue a load already under way ahead of this one
        instead of deadlocking with it), and compared again once it is held: another load may have just
        made them. Readers of the table wait until this load commits: it happens once per change."""

        with engine.connect() as look:
            plan = evolution.compare(look, self.contract)
        if plan.breaking:
            raise ContractTableMismatch(plan)
        if not plan.additive:
            return False
        plan = evolution.compare_locked(self._conn, self.contract)
        if plan.breaking:
            raise ContractTableMismatch(plan)
        try:
            self.schema_changes = plan.apply(self._conn)
        except sa.exc.DBAPIError as exc:
            if isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
                why = f"the function's database role does not own table {self.contract.target}"
                raise ContractTableMismatch(plan, not_allowed=why) from exc
            raise
        return True

    def _cancel(self) -> None:
        """At the deadline: note what the load waits for, if it waits for a lock, then cancel its statement."""
        self.cancelled = True
        try:
            driver = self._conn.connection.driver_connection
            pid = driver.info.backend_pid  # type: ignore[union-attr]
        except Exception:  # the connection is gone already; the load fails either way
            return
        try:
            work = in_thread(lambda: self._lock_wait(pid), "load-blocker")
            self.waited_for = awaited(work, time.monotonic() + BLOCKER_LOOKUP_SECONDS, lambda: TimeoutError())
        except Exception:  # the server did not say in time: a plain timeout
            pass
        with self._release_lock:
            if self._released:  # the load ended meanwhile: its connection may be doing someone else's work
                return
            self._cancel_sent = True
            try:
                driver.cancel()  # type: ignore[union-attr]
            except Exception:  # the connection may be gone already; the load fails either way
                pass

    def _release(self) -> None:
        """Give the load's connection back, once the watchdog can no longer cancel what it does. The watchdog
        looks up what the load waits for before it cancels (up to BLOCKER_LOOKUP_SECONDS): a load rolled back
        meanwhile had returned its connection to the pool, and the late cancel stopped the next statement on
        it, the failure's own ledger row (seen once in CI: a timeout with nothing on record). A connection a
        cancel was sent to is closed, never pooled: a cancel still on its way would stop its next statement."""
        with self._release_lock:
            released, self._released = self._released, True
        if released:
            return
        if self._cancel_sent:
            self._conn.invalidate()
        self._conn.close()

    def _lock_wait(self, pid: int) -> str | None:
        """What the session ``pid`` waits for, if it waits for a lock, and who holds it; asked on a connection
        of its own. Names the holders' pids and application names (or kinds: an autovacuum worker), never their
        statements (they may hold other people's data)."""
        with self._engine.connect() as look:
            row = look.execute(
                sa.text(
                    "SELECT l.locktype, l.relation::regclass::text, l.mode, "
                    "(SELECT string_agg(format('pid %s, %s', a.pid, coalesce(nullif(a.application_name, ''), "
                    "nullif(a.backend_type, 'client backend'), 'no application name')), '; ') FROM pg_stat_activity a "
                    "WHERE a.pid = ANY(pg_blocking_pids(l.pid))) "
                    "FROM pg_locks l WHERE l.pid = :pid AND NOT l.granted LIMIT 1"
                ),
                {"pid": pid},
            ).first()
        if row is None:
            return None
        locktype, relation, mode, holders = row
        what = f"a {mode} lock on {relation}" if relation else f"another transaction ({locktype} lock)"
        return f"it waited for {what}, held by {holders or 'another session'}"

    def _check_cancelled(self) -> None:
        if self.cancelled:
            raise LoadCancelled("the load was cancelled at the deadline")

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _choose_strategy(self, locked: bool) -> str:
        """How the rows reach the target ("copy" straight into it, or "staging" then MERGE); ``locked``:
        this transaction holds ACCESS EXCLUSIVE on it already."""
        conn, target = self._conn, self.target
        mode = self.contract.load_mode
        if mode == "replace":
            # The DELETE must see (and remove) every row another replace committed, and no other writer may
            # add rows it cannot see: the table is this load's to write until it commits.
            self._lock_target()
            conn.execute(sa.delete(target))
            return "copy"
        if self._size_bytes >= BULK_LOAD_BYTES and self._empty_and_rebuildable(conn if locked else None):
            # A big first load: COPY into the empty table without its keys and indexes, then build them
            # once (a sort) instead of one B-tree insert per row: ~25% less work for PostgreSQL. The keys
            # hold: the file's duplicates were rejected, and a build that fails fails the load. The lock is
            # this transaction's first on the table (the look was another's), so two such loads queue
            # rather than deadlock; readers of the (empty) table wait for this load.
            conn.execute(sa.text(f"LOCK TABLE {quoted(target)} IN ACCESS EXCLUSIVE MODE"))
            if not self._has_rows(conn):
                self._bulk = True
                self._rebuild = self._drop_indexes()
                return "copy"
            return "staging" if mode == "upsert" else "copy"  # another load got there first
        if mode == "append":
            return "copy"
        if self._has_rows(conn):
            return "staging"
        self._lock_target()
        return "staging" if self._has_rows(conn) else "copy"

    def _create_staging(self) -> None:
        """The staging table of an upsert into a table with rows: temporary, or for a big one (where the
        server runs parallel workers and the role may create tables) unlogged, which parallel workers can
        scan (see _changed_rows)."""
        conn = self._conn
        if self._size_bytes >= PARALLEL_STAGING_BYTES and (conn.dialect.server_version_info or (0,)) >= (15,):
            pid, parallel = conn.execute(
                sa.text(
                    "SELECT pg_backend_pid(), least(current_setting('max_parallel_workers_per_gather')::int, "
                    "current_setting('max_parallel_workers')::int) > 0"
                )
            ).one()
        else:
            pid, parallel = None, False
        if parallel:
            unlogged = staging_table(self.contract, pid, self._schema)
            try:
                with conn.begin_nested():
                    unlogged.create(conn)
            except sa.exc.DBAPIError as exc:
                if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
                    raise
            else:
                self.staging, self._staging_unlogged = unlogged, True
                return
        self.staging.create(conn)

    def _has_rows(self, conn: sa.Connection) -> bool:
        return bool(conn.execute(sa.select(sa.exists().select_from(self.target))).scalar())

    def _empty_and_rebuildable(self, conn: sa.Connection | None) -> bool:
        """The target is empty, the function owns it (so may drop and add its keys) and no foreign key
        points at it. Looked at in a transaction of its own, unless ``conn`` (which holds the table's
        lock already: looking from another session would wait for this one) is given."""
        with nullcontext(conn) if conn is not None else self._engine.connect() as look:
            row = look.execute(
                sa.text(
                    "SELECT pg_has_role(c.relowner, 'USAGE') AND NOT EXISTS "
                    "(SELECT 1 FROM pg_constraint f WHERE f.confrelid = c.oid) "
                    "FROM pg_class c WHERE c.oid = CAST(:name AS regclass)"
                ),
                {"name": quoted(self.target)},
            ).scalar()
            return bool(row) and not self._has_rows(look)

    def _drop_indexes(self) -> list[str]:
        """Drop the target's keys and indexes; return the statements that build them again."""
        name = quoted(self.target)
        rows = self._about_target(
            "SELECT con.conname, pg_get_constraintdef(con.oid), NULL FROM pg_constraint con "
            "WHERE con.conrelid = CAST(:t AS regclass) AND con.contype IN ('p', 'u') "
            "UNION ALL SELECT CAST(CAST(i.oid AS regclass) AS text), NULL, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = CAST(:t AS regclass) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid)"
        ).all()
        rebuild = []
        for index_name, constraint, index_definition in rows:
            if constraint is not None:
                self._conn.execute(sa.text(f"ALTER TABLE {name} DROP CONSTRAINT {sql_identifier(index_name)}"))
                rebuild.append(f"ALTER TABLE {name} ADD CONSTRAINT {sql_identifier(index_name)} {constraint}")
            else:
                self._conn.execute(sa.text(f"DROP INDEX {index_name}"))  # as regclass writes it: quoted, qualified
                rebuild.append(index_definition)
        return rebuild

    def _constant_lineage_default(self, md5: str) -> list[str]:
        """For a bulk COPY (the table this transaction's alone): the lineage column's default becomes this
        file's MD5 as a constant, and the statement that puts the column's own default back is returned, to
        run before the commit, so that no other session ever sees the constant. PostgreSQL evaluates a
        column's default for every row: ``current_setting('ingest.md5')`` took ~8% of a COPY of 1M rows
        (1.33 s against 1.23 s with a constant, alternating), a constant nothing."""
        found = self._about_target(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
            "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attname = '_ingest_md5' AND NOT a.attisdropped"
        ).first()
        if found is None:  # a table without the lineage column: nothing to set
            return []
        column = f"ALTER TABLE {quoted(self.target)} ALTER COLUMN _ingest_md5"
        constant = sql.Literal(md5).as_string(self._conn.connection.driver_connection)  # type: ignore[arg-type]
        self._conn.execute(sa.text(f"{column} SET DEFAULT {constant}"))
        own = found[0]
        return [f"{column} SET DEFAULT {own}" if own is not None else f"{column} DROP DEFAULT"]

    def _about_target(self, query: str) -> sa.CursorResult[*TupleAny]:
        """A catalog ``query`` about the target, in this transaction, its name bound as ``:t``."""
        return self._conn.execute(sa.text(query), {"t": quoted(self.target)})

    def _lock_target(self) -> None:
        """Keep other writers of the target out until this transaction ends (readers go on)."""
        self._conn.execute(sa.text(f"LOCK TABLE {quoted(self.target)} IN SHARE ROW EXCLUSIVE MODE"))

    @_busy_at_deadline
    def write(self, data: bytes) -> None:
        """Queue a block for COPY; a writer thread sends it while the caller validates the next one."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._send_blocks, name="copy-writer", daemon=True)
            self._writer.start()
        if self._writer_error is not None:
            raise self._writer_error
        with self._dequeued:
            while self._queued and self._queued + len(data) > QUEUED_BYTES and self._writer_error is None:
                self._dequeued.wait()
            self._queued += len(data)
        self._blocks.put(data)

    def _send_blocks(self) -> None:
        while (block := self._blocks.get()) is not None:
            if self._writer_error is None:
                try:
                    self._copy.write(block)
                except BaseException as exc:
                    self._writer_error = exc
            with self._dequeued:
                self._queued -= len(block)
                self._dequeued.notify()

    def _drain_writer(self) -> None:
        if self._writer is not None:
            self._blocks.put(None)
            self._writer.join()
            self._writer = None

    def _finish_copy(self, error: BaseException | None = None) -> None:
        self._drain_writer()
        if error is None and self._writer_error is not None:
            error = self._writer_error
            if self._copy_open:
                self._copy_open = False
                self._copy_context.__exit__(type(error), error, error.__traceback__)
            raise error
        if self._copy_open:
            self._copy_open = False
            exc_type = type(error) if error else None
            self._copy_context.__exit__(exc_type, error, error.__traceback__ if error else None)
            self._copied = max(self._cursor.rowcount, 0)

    @_busy_at_deadline
    def commit(self, ledger_entry: Mapping[str, Any], before_commit: Callable[[], object] | None = None) -> int | None:
        """Merge staging into the target and commit with the ledger row; None if already loaded.
        ``before_commit`` runs last, before COMMIT (an exception from it rolls the load back).

        The ledger row comes after every lock on the table (the lock order in the module's docstring): the
        merge's lock is taken first, so a load waiting on the ledger's index for another load of the same
        content never holds what that load waits for."""
        assert self.md5 is not None, "a load commits after start()"
        self._finish_copy()
        self._check_cancelled()
        conn = self._conn
        for statement in self._rebuild:
            conn.execute(sa.text(statement))
        if self.strategy == "staging":
            self._lock_target()  # MERGE has no ON CONFLICT: no other writer until the commit
        ledger_id = conn.execute(
            pg.insert(ledger)
            .values(**ledger_entry, status="loaded", schema_changes="\n".join(self.schema_changes) or None)
            .on_conflict_do_nothing(index_elements=["table_name", "md5"], index_where=ledger.c.status == "loaded")
            .returning(ledger.c.id)
        ).scalar()
        if ledger_id is None:  # the same content was loaded meanwhile, by another delivery
            if before_commit is not None:
                before_commit()
            self.rollback()
            return None
        self.rows_loaded = self._merge() if self.strategy == "staging" else self._copied
        conn.execute(sa.update(ledger).where(ledger.c.id == ledger_id).values(rows_loaded=self.rows_loaded))
        if before_commit is not None:
            before_commit()
        self._disarm()
        self._check_cancelled()
        self._transaction.commit()
        self._release()
        self._matched(self.contract, True)
        return int(ledger_id)

    def _merge(self) -> int:
        """Upsert the staged rows (only upserts into a table with rows are staged)."""
        names = list(self.contract.column_names)
        if (self._conn.dialect.server_version_info or (0,)) >= (15,):
            return self._merge_statement(names)
        # PostgreSQL before 15 has no MERGE: INSERT … ON CONFLICT, which probes the key index row by row
        into = [*names, "_ingest_md5"]
        source = sa.select(*(self.staging.c[n] for n in names), sa.literal(self.md5, sa.String(32)))
        upsert = pg.insert(self.target).from_select(into, source)
        key = set(self.contract.upsert_key)
        updates: dict[str, Any] = {n: upsert.excluded[n] for n in into if n not in key}
        updates["_ingest_loaded_at"] = sa.func.now()
        changed = sa.tuple_(*(self.target.c[n] for n in names)).is_distinct_from(
            sa.tuple_(*(upsert.excluded[n] for n in names))
        )
        statement = upsert.on_conflict_do_update(index_elements=list(key), set_=updates, where=changed)
        return int(self._conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount)

    def _merge_statement(self, names: list[str]) -> int:
        """Upsert the staged rows with MERGE, which joins staging and target in one pass (a hash join for
        big batches) where INSERT … ON CONFLICT probes the key index row by row: ~40% less time for a
        million rows. Rows the file leaves as they were are not rewritten (no new tuple, no WAL), so a
        daily full snapshot of mostly unchanged rows costs reading, not writing.

        MERGE has no ON CONFLICT: a concurrent insert of the same key would fail it. So the target is
        locked against other writers (readers go on) from before the ledger row (see commit) to the commit,
        a moment after the rows were staged; loads into one table serialize only for their merge."""
        q = sql_identifier
        target, staging = quoted(self.target), quoted(self.staging)
        key = self.contract.upsert_key
        others = [n for n in names if n not in key]
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in key)
        changed = (
            f"({', '.join(f't.{q(n)}' for n in names)}) IS DISTINCT FROM ({', '.join(f's.{q(n)}' for n in names)})"
        )
        assignments = ", ".join(
            [*(f"{q(n)} = s.{q(n)}" for n in others), "_ingest_md5 = :md5", "_ingest_loaded_at = now()"]
        )
        columns = ", ".join([*(q(n) for n in names), "_ingest_md5"])
        values = ", ".join([*(f"s.{q(n)}" for n in names), ":md5"])
        # Row counts and the key's distinct values, for the planner to choose a hash join (the key columns
        # only: sampling the others costs time and changes no plan). A small sample does: at the default
        # target ANALYZE reads 30,000 pages, all of a million staged rows (0.11 s); 3,000 take 0.02 s and
        # give the same plan. And room to build that hash in memory (a million staged keys spill to disk
        # in batches under the default 4 MB: MERGE 1.8 s → 1.25 s).
        keys = ", ".join(q(k) for k in key)
        self._conn.execute(sa.text(f"SET LOCAL default_statistics_target = {STAGING_STATISTICS_TARGET}"))
        self._conn.execute(sa.text(f"ANALYZE {staging} ({keys})"))
        self._conn.execute(sa.text(f"SET LOCAL work_mem = '{MERGE_WORK_MEM}'"))
        # a staged row the target does not have (its key column NULL after the LEFT JOIN), or has otherwise
        differs = f"t.{q(key[0])} IS NULL OR {changed}"
        source = staging
        if self._staging_unlogged and self._mostly_unchanged(on, differs):
            source = self._changed_rows(on, differs)
        statement = sa.text(
            f"MERGE INTO {target} AS t USING {source} AS s ON {on} "
            f"WHEN MATCHED AND {changed} THEN UPDATE SET {assignments} "
            f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
        )
        result = self._conn.execute(statement, {"md5": self.md5}, execution_options={"preserve_rowcount": True})
        if self._staging_unlogged:
            self._conn.execute(sa.text(f"DROP TABLE {staging}"))  # before the commit: no one ever sees it
        return int(result.rowcount)

    def _mostly_unchanged(self, on: str, differs: str) -> bool:
        """Whether fewer than CHANGED_SHARE_FOR_PREFILTER of a sample of the staged rows (SAMPLE_PAGES of its
        pages or so, taken at random, at most SAMPLE_ROWS rows, each looked up by key) are new or differ from
        the target's row."""
        percent = min(100.0, 100.0 * SAMPLE_PAGES * 8192 / max(self._size_bytes, 1))
        sampled, different = self._conn.execute(
            sa.text(
                f"SELECT count(*), count(*) FILTER (WHERE {differs}) FROM "
                f"(SELECT * FROM {quoted(self.staging)} TABLESAMPLE SYSTEM ({percent:.4f}) REPEATABLE (0) "
                f"LIMIT {SAMPLE_ROWS}) AS s "
                f"LEFT JOIN {quoted(self.target)} AS t ON {on}"
            )
        ).one()
        return bool(sampled) and different < sampled * CHANGED_SHARE_FOR_PREFILTER

    def _changed_rows(self, on: str, differs: str) -> str:
        """The staged rows new to the target or different from its row, in a temporary table (dropped at
        commit). PostgreSQL finds them with a join it runs in parallel workers (which cannot scan a temporary
        table), so for a file of mostly unchanged rows the MERGE joins only the few left. Under the lock the
        MERGE holds, so no other writer changes the target in between. 1M staged rows, two cores: none
        changed 0.6-0.9 s against 1.2-1.3 s for the MERGE of them all; all changed, this join costs ~0.9 s
        more than it saves (hence _mostly_unchanged first)."""
        q = sql_identifier
        staging, target = quoted(self.staging), quoted(self.target)
        rows = q(f"_ingest_changed_{self.contract.table}")
        key = self.contract.upsert_key
        # The planner counts every staged row as leaving the join (it cannot tell how many differ) and so
        # prices their transfer from the workers too high to choose them; few leave in the case this is for.
        self._conn.execute(sa.text("SET LOCAL parallel_tuple_cost = 0.01"))
        self._conn.execute(
            sa.text(
                f"CREATE TEMPORARY TABLE {rows} ON COMMIT DROP AS SELECT s.* FROM {staging} AS s "
                f"LEFT JOIN {target} AS t ON {on} WHERE {differs}"
            )
        )
        self._conn.execute(sa.text(f"ANALYZE {rows} ({', '.join(q(k) for k in key)})"))
        return rows

    def rollback(self, error: BaseException | None = None) -> None:
        self._disarm()
        if isinstance(error, (sa.exc.DBAPIError, psycopg.Error)):  # the table may have changed: compare again
            self._matched(self.contract, False)
        try:
            self._finish_copy(error or RuntimeError("load abandoned"))
        except Exception:
            pass
        finally:
            if self._transaction.is_active:
                self._transaction.rollback()
            self._release()


#: Ledgers made before content identity became per table had one ``loaded`` row per MD5 across all tables.
_OLD_LOADED_INDEX = "ingest_files_loaded_md5"


def _ensure_schema(conn: sa.Connection, schema: str, what: str) -> None:
    """Create ``schema`` if it is missing (where the role may: db/roles.sql makes the schemas beforehand, so
    that the function needs no CREATE on the database); runs under the DDL lock."""
    if conn.execute(sa.text("SELECT to_regnamespace(:s) IS NOT NULL"), {"s": sql_identifier(schema)}).scalar():
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.text(f"CREATE SCHEMA {sql_identifier(schema)}"))
    except sa.exc.ProgrammingError as exc:  # no CREATE on the database: say who makes it
        raise SchemaMissing(
            f"schema {schema!r} ({what}) does not exist and the function's role may not create it: run "
            f"db/roles.sql with schemas={schema} (it creates the schemas and grants USAGE, CREATE on them)"
        ) from exc


def _move_ledger_from_public(conn: sa.Connection, schema: str) -> None:
    """A ledger made before the pipeline had a schema of its own lies in ``public``: move it (and the
    attempts table) with every row, index and sequence, once. Runs under the DDL lock."""
    found = sa.text(  # the catalog, not to_regclass: a role without USAGE on public may ask too
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = :t AND n.nspname IN ('public', :s) AND c.relkind = 'r'"
    )
    for table in (LEDGER_TABLE, ATTEMPTS_TABLE):
        if set(conn.execute(found, {"t": table, "s": schema}).scalars()) == {"public"}:
            conn.execute(sa.text(f"ALTER TABLE public.{table} SET SCHEMA {sql_identifier(schema)}"))


def _migrate_ledger(conn: sa.Connection, schema: str) -> None:
    """Bring an existing ledger up to date, keeping every row: the unique index of loads becomes per
    (table, MD5). Runs under the DDL lock; does nothing (and needs no privilege) when already done."""
    inspector = sa.inspect(conn)
    indexes = {i["name"] for i in inspector.get_indexes(LEDGER_TABLE, schema=schema)}
    columns = {c["name"] for c in inspector.get_columns(LEDGER_TABLE, schema=schema)}
    name = f"{sql_identifier(schema)}.{LEDGER_TABLE}"
    for column in ledger.columns:  # columns added since (always nullable)
        if column.name not in columns:
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {ddl}"))
    if _OLD_LOADED_INDEX not in indexes and "ingest_files_loaded_table_md5" in indexes:
        return
    for index in ledger.indexes:
        index.create(conn, checkfirst=True)
    conn.execute(sa.text(f"DROP INDEX IF EXISTS {sql_identifier(schema)}.{_OLD_LOADED_INDEX}"))
