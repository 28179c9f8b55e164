"""The use case: ingest one S3 object. Wires the pure core to the adapters; owns no I/O of its own.

Order matters for the promises the pipeline makes:
1. the object's MD5 decides whether it was loaded already (then ``skipped``), before anything is loaded
   or written;
2. processing streams the object once: valid rows go to COPY (staging) and to ``processed/``, rejected
   rows to ``errors/`` (an object whose ETag is no MD5 is copied into a local temporary file, when there
   is room, by a thread that hashes it meanwhile: processing reads the copy behind it, so that S3 is read
   once, and its output waits for the MD5, see ``_Outputs``);
3. outputs are completed *before* the commit, so a crash can lose neither a load's report nor the load;
4. the merge and the ledger row commit together, so a retry after any failure loads exactly once.
Rejected files are final (a retry would reject them again); failures are raised so the delivery retries.

A deadline (from the Lambda context's remaining time, less a margin) ends a file that cannot be finished
in time: the load is rolled back, the ledger gets ``failed``/``timeout`` with how far it got, the receipt
goes out, and the failure is raised so the delivery is retried and in the end dead-lettered, on record.

An attempt that dies without answering (its runtime killed: out of memory, the hard timeout, a crash)
cannot record anything itself. So each delivery from the queue first records that it begins
(``ingest_attempts``, with a heartbeat of how far it got), and the next delivery of the same message puts
every earlier one that never answered on record (``failed``/``function_died``, with a receipt); the last
delivery the queue allows, after nothing but deaths, does not run the same fatal work again: it ends
``failed``/``function_died`` itself, and the message goes to the dead-letter queue explained.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from . import metrics
from .adapters.evolution import ContractTableMismatch
from .adapters.network import ServiceUnreachable
from .adapters.postgres import (
    AttemptsSoFar,
    Database,
    DatabaseUnreachable,
    DeadAttempt,
    EarlierOutcome,
    Load,
    TableBusy,
)
from .adapters.s3 import ObjectInfo, ObjectStore, Spool, StreamingWriter, wait_until_deadline
from .adapters.sns import Notifier
from .columnar import ExactEngineNeeded
from .contract import Contract, ContractRegistry
from .deadlines import in_thread
from .log import logger
from .processing import ENGINES, Outcome, error_dict, process, summary_document
from .receipt import ERRORS_IN_RECEIPT, Receipt
from .rejection import FileRejected, bounded

UNMATCHED_PREFIX = "_unmatched"
MAX_KEY_LENGTH = 1024
#: How much output processing may produce before the file's MD5 is known (a multipart upload being hashed
#: meanwhile); past it, processing waits for the hash. Bounded, so memory stays flat.
OPEN_WAIT_BYTES = 32 * 1024 * 1024
#: A failure's message (its exception's text, and what was done) is cut at this many characters, saying so; a
#: contract that no longer matches its table says what differs, at up to the rejections' MAX_MESSAGE_CHARS.
FAILURE_MESSAGE_CHARS = 2000
#: The share of the time left before the invocation ends that an outcome's own ledger row may take (the rest is
#: its receipt's): see _ledger_until.
LEDGER_SHARE = 0.5
#: How often a delivery from the queue writes how far it got (rows and bytes read), should it never answer.
HEARTBEAT_SECONDS = 5.0


@dataclass(frozen=True)
class Delivery:
    """Which delivery of a queue message this is (what an SQS record tells the handler)."""

    message_id: str
    receive_count: int | None  # 1 for the first delivery
    max_receives: int | None = None  # the queue's maxReceiveCount: after that many, the dead-letter queue

    @property
    def last(self) -> bool:
        """Whether the queue sends the message to the dead-letter queue if this delivery fails too."""
        return bool(self.max_receives and self.receive_count and self.receive_count >= self.max_receives)


@dataclass
class Dependencies:
    contracts: ContractRegistry
    store: ObjectStore
    database: Database
    notifier: Notifier
    output_bucket: str | None = None  # outputs go to the source bucket unless set


@dataclass
class _Attempt:
    bucket: str
    key: str
    request_id: str | None
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    md5: str | None = None
    size: int | None = None
    contract: Contract | None = None
    outcome: Outcome = field(default_factory=Outcome)
    deadline: float | None = None  # time.monotonic() by which the file must be done (or given up)
    ends: float | None = None  # the invocation's end, less a margin: the ledger row and receipt wait until then
    ledger_asked: bool = False  # whether the ledger was asked about this content (and had no verdict)
    event_time: datetime | None = None  # when S3 says the object was created
    committed: datetime | None = None  # when its load committed

    @property
    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class DeadlineReached(Exception):
    """The function's own deadline passed before the file was finished; nothing of it was committed."""


class FunctionDied(Exception):
    """Every earlier delivery of this file died without answering, and this is the last the queue allows: the
    same work is not run again."""


def _until(chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
    for chunk in chunks:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineReached("the deadline passed while the file was being read")
        yield chunk


class ContentChanged(Exception):
    """The bytes read did not hash to the MD5 the ETag promised: hash them properly and start again."""


def _hashed(chunks: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def processed_key(table: str, md5: str) -> str:
    return f"processed/{table}/{md5}.csv"


def errors_keys(table: str | None, md5: str) -> tuple[str, str]:
    base = f"errors/{table or UNMATCHED_PREFIX}/{md5}"
    return base + ".csv", base + ".json"


def check_key(key: str) -> None:
    """Refuse keys no sane producer writes: control characters, path traversal, oversize."""
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise FileRejected("invalid_key", f"the object key is longer than {MAX_KEY_LENGTH} bytes")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise FileRejected("invalid_key", f"the object key {key!r} contains control characters")
    if any(part in (".", "..") for part in re.split(r"[/\\]", key)):
        raise FileRejected("invalid_key", f"the object key {key!r} contains a '.' or '..' path segment")


def choose_contract(contracts: ContractRegistry, key: str) -> Contract:
    matches = contracts.match(key)
    if not matches:
        claimed = "; ".join(f"{c.name}: {', '.join(c.keys)}" for c in contracts)
        raise FileRejected("no_contract", f"no contract claims the key {key!r} (contracts and their keys: {claimed})")
    if len(matches) > 1:
        names = ", ".join(c.name for c in matches)
        raise FileRejected("ambiguous_contract", f"the key {key!r} is claimed by several contracts ({names})")
    return matches[0]


def ingest_object(
    bucket: str,
    key: str,
    deps: Dependencies,
    request_id: str | None = None,
    deadline: float | None = None,
    ends: float | None = None,
    delivery: Delivery | None = None,
    event_time: datetime | None = None,
    unreachable: Exception | None = None,
) -> Receipt:
    """Ingest one object, publish its receipt and log its metrics. Raises (after publishing ``failed``) on
    failures.

    ``deadline``: a ``time.monotonic()`` value by which the work must stop (a timeout, recorded as such);
    ``ends``: when the invocation ends, after the deadline's margin: an outcome's own ledger row and the
    receipt's publish are waited for until then at the most (what could not be written is then in the log);
    ``delivery``: which delivery of a queue message this is (earlier ones that died are put on record);
    ``event_time``: when S3 says the object was created (the metrics' lag from upload to commit);
    ``unreachable``: a service an earlier object of the same invocation found out of reach: this one fails
    at once with that reason (on record where the database answers) rather than wait for it again."""
    attempt = _Attempt(
        bucket=bucket, key=key, request_id=request_id, deadline=deadline, ends=ends, event_time=event_time
    )
    logger.append_keys(bucket=bucket, key=key, md5=None)
    trace = _Trace(attempt, deps, delivery) if delivery is not None else None
    status = "failed"
    try:
        try:
            if unreachable is not None:
                raise unreachable
            if trace is not None:
                trace.begin()
            try:
                receipt = _ingest(attempt, deps, trust_etag=True)
            except ContentChanged:
                logger.warning("content did not match its ETag; hashing it and starting again")
                receipt = _ingest(attempt, deps, trust_etag=False)
        except Exception as exc:
            if attempt.past_deadline and not isinstance(exc, DeadlineReached | TableBusy):
                exc = DeadlineReached(f"the deadline passed ({type(exc).__name__}: {exc})")
            receipt = _failed(attempt, deps, exc)
            _publish(deps.notifier, receipt, attempt.ends)
            _metrics(attempt, receipt)
            raise exc from None
        _publish(deps.notifier, receipt, attempt.ends)
        _metrics(attempt, receipt)
        status = receipt.status
        return receipt
    finally:
        if trace is not None:
            trace.end(status)


def could_not_start(bucket: str, key: str, exc: Exception, notifier: Notifier, ends: float | None = None) -> Receipt:
    """The receipt of a file the function could not begin, its dependencies not built (the database's secret
    out of reach, say): published and logged, with no ledger row (the database is not known yet); the caller
    raises, so that the delivery is retried."""
    reason = str(getattr(exc, "reason", "error"))  # ServiceUnreachable's, bootstrap.ConfigurationError's
    message = bounded(f"{exc}; the file was not read and the delivery will be retried", FAILURE_MESSAGE_CHARS)
    logger.append_keys(bucket=bucket, key=key, md5=None)
    logger.error("failed", extra={"detail": message, "reason": reason})
    receipt = Receipt(status="failed", bucket=bucket, key=key, reason=reason, message=message)
    _publish(notifier, receipt, ends)
    return receipt


class _Trace:
    """A delivery's own row in ``ingest_attempts``: opened as it begins (putting earlier deliveries of the
    message that never answered on record), beating while it works, closed as it answers."""

    def __init__(self, attempt: _Attempt, deps: Dependencies, delivery: Delivery):
        self.attempt, self.deps, self.delivery = attempt, deps, delivery
        self.id: int | None = None
        self._stop = threading.Event()

    def begin(self) -> None:
        """Record this delivery; put each earlier one that never answered on record (a ledger row and a
        receipt); raise FunctionDied if they all died and this one is the last the queue allows."""
        attempt, delivery = self.attempt, self.delivery
        so_far = self.deps.database.begin_attempt(
            delivery.message_id, delivery.receive_count, attempt.bucket, attempt.key, attempt.request_id
        )
        self.id = so_far.this
        for dead in so_far.died_now:
            _died(attempt, self.deps, dead, delivery)
        if delivery.last and so_far.earlier and so_far.died == so_far.earlier:
            raise FunctionDied(_gave_up(so_far, delivery))
        threading.Thread(target=self._beat, name="attempt-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            o = self.attempt.outcome
            with suppress(Exception):  # a heartbeat missed is a detail lost, nothing more
                self.deps.database.attempt_progress(self.id or 0, o.rows_total, o.bytes_read, self.attempt.size)

    def end(self, status: str) -> None:
        self._stop.set()
        if self.id is not None:
            try:
                self.deps.database.end_attempt(self.id, status)
            except Exception:
                logger.warning("could not close this delivery's attempt row", exc_info=True)


def _died(attempt: _Attempt, deps: Dependencies, dead: DeadAttempt, delivery: Delivery) -> None:
    """The receipt, then the ledger row, of an earlier delivery that never answered, as this one found it: the
    row closes the dead attempt in its transaction (once on record; a receipt published by a delivery that
    died before recording goes out again, as SNS may deliver any message twice)."""
    began = f"{dead.started_at:%Y-%m-%d %H:%M:%S} UTC" if dead.started_at else "an unknown time"
    progress = ""
    if dead.progress_at is not None:
        progress = (
            f"; by {dead.progress_at:%H:%M:%S} it had read {dead.rows_read or 0:,} rows and "
            f"{dead.bytes_read or 0:,} of {dead.size_bytes or 0:,} bytes"
        )
    message = bounded(
        f"delivery {dead.receive_count or '?'} of this file (request {dead.request_id or 'unknown'}) began at "
        f"{began} and never answered: its runtime was killed (out of memory, the function's timeout, a crash: "
        f"see that request's log){progress}; delivery {delivery.receive_count or '?'} found it and goes on",
        FAILURE_MESSAGE_CHARS,
    )
    logger.error("an earlier delivery died", extra={"detail": message, "reason": "function_died"})
    entry = {
        **_ledger_entry(attempt, deps),
        "md5": attempt.md5 or "unknown",
        "status": "failed",
        "reason": "function_died",
        "error": message,
        "request_id": dead.request_id,
        "started_at": dead.started_at or attempt.started_at,
        "duration_ms": None,
        "rows_total": dead.rows_read,
    }
    receipt = Receipt(status="failed", bucket=attempt.bucket, key=attempt.key, reason="function_died", message=message)
    _publish(deps.notifier, receipt, attempt.ends)
    try:
        deps.database.record_death(dead.id, entry, _ledger_until(attempt))
    except Exception:
        logger.warning("could not record the earlier delivery's death in the ledger", exc_info=True)


def _gave_up(so_far: AttemptsSoFar, delivery: Delivery) -> str:
    return (
        f"the function died on this file {so_far.died} time(s) without answering, on every delivery so far, and "
        f"this is the last delivery the queue allows ({delivery.max_receives}): the same work was not run again, "
        "and the message goes to the dead-letter queue. Find the cause in those requests' logs (memory: the "
        "function's MemorySize; its timeout; a crash), then: ingest replay --dead-letters"
    )


def _ingest(attempt: _Attempt, deps: Dependencies, trust_etag: bool) -> Receipt:
    bucket, key = attempt.bucket, attempt.key
    info = deps.store.head(bucket, key, attempt.deadline)
    attempt.size = info.size
    spool: Spool | None = None
    if trust_etag and info.etag_md5:
        attempt.md5 = info.etag_md5
    else:  # a multipart upload's ETag is no MD5: the bytes are hashed (into a local copy, if there is room)
        spool = deps.store.spool(bucket, key, info.etag, info.size, attempt.deadline)
        if spool is None:
            attempt.md5 = deps.store.md5(bucket, key, info.etag, attempt.deadline)
    try:
        return _ingest_identified(attempt, deps, info, spool)
    finally:
        if spool is not None:
            spool.close()


class _Decided(Exception):
    """The ledger decided this content before: the file is skipped (the reason and message say why)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class _Outputs:
    """Where one run of processing sends its bytes: the load (COPY) and processed/ for valid rows, errors/
    for rejected ones. All three are named by the file's MD5, and none opens before the ledger was asked
    whether that content was decided already (``_Decided``).

    The load gets its table ready in a thread of its own (``prepare``: the transaction, the contract
    compared with the table, the lock it needs) while processing starts. A multipart upload's MD5 is known
    only once its spool has every byte: processing starts from the spool's first megabyte meanwhile, and
    what it emits waits here until the MD5 is known (at most OPEN_WAIT_BYTES; past that, processing waits
    for the hash), so that all three overlap."""

    def __init__(self, attempt: _Attempt, deps: Dependencies, info: ObjectInfo, spool: Spool | None):
        self.attempt, self.deps, self.info, self.spool = attempt, deps, info, spool
        self.load: Load | None = None
        self.processed: StreamingWriter | None = None
        self.errors: StreamingWriter | None = None
        self.opened = False
        self._waiting: list[tuple[bool, bytes]] = []
        self._waiting_bytes = 0
        self._preparing: Future[Load] | None = None

    def valid(self, block: bytes) -> None:
        if not self.opened and not self._wait(True, block):
            return
        assert self.load is not None and self.processed is not None
        self.load.write(block)
        self.processed.write(block)

    def error(self, block: bytes) -> None:
        if not self.opened and not self._wait(False, block):
            return
        assert self.errors is not None
        self.errors.write(block)

    def _wait(self, valid: bool, block: bytes) -> bool:
        """Keep ``block`` until the outputs open; True if it should be written now (they just opened)."""
        hashed = self.attempt.md5 is not None or (self.spool is not None and self.spool.hashed)
        if not hashed and self._waiting_bytes + len(block) <= OPEN_WAIT_BYTES:
            self._waiting.append((valid, block))
            self._waiting_bytes += len(block)
            return False
        self.open()
        return True

    def identify(self) -> str:
        """The file's MD5 (waiting for the spool's last byte if need be), and the ledger's earlier verdict."""
        attempt = self.attempt
        md5 = _hash_known(attempt, self.spool)
        if not attempt.ledger_asked:
            _ask_ledger(attempt, self.deps)
            attempt.ledger_asked = True
        return md5

    def prepare(self) -> None:
        """Open the load's transaction and ready its table in a thread, while processing starts (before the
        MD5 is known, if it is not yet): a cold start compares the contract with the table, which takes a
        tenth of a second or more, and a table another load holds waits for it there, not here."""
        contract = self.attempt.contract
        assert contract is not None
        begin = partial(
            self.deps.database.begin_load,
            contract,
            None,
            deadline=self.attempt.deadline,
            size_bytes=self.info.size or 0,
        )
        self._preparing = in_thread(begin, "load-prepare")

    def _prepared(self) -> Load:
        """The load prepare() began, once it is ready; raises what stopped it."""
        if self._preparing is not None:
            preparing, self._preparing = self._preparing, None
            self.load = preparing.result()
        assert self.load is not None, "the outputs open after prepare()"
        return self.load

    def _settle(self) -> None:
        """Before undoing the outputs: wait for a load being prepared (its failure no longer matters)."""
        if self._preparing is not None:
            with suppress(Exception):
                self._prepared()

    def open(self) -> None:
        if self.opened:
            return
        md5 = self.identify()
        self._prepared().start(md5)
        attempt, deps = self.attempt, self.deps
        contract = attempt.contract
        assert contract is not None
        self.processed = deps.store.writer(
            deps.output_bucket or attempt.bucket, processed_key(contract.target, md5), "text/csv", attempt.deadline
        )
        self.errors = self._errors_writer()
        self.opened = True
        waiting, self._waiting, self._waiting_bytes = self._waiting, [], 0
        for valid, block in waiting:
            (self.valid if valid else self.error)(block)

    def _errors_writer(self) -> StreamingWriter:
        attempt = self.attempt
        assert attempt.contract is not None and attempt.md5 is not None
        key = errors_keys(attempt.contract.target, attempt.md5)[0]
        return self.deps.store.writer(self.deps.output_bucket or attempt.bucket, key, "text/csv", attempt.deadline)

    def errors_only(self) -> bool:
        """For a rejected file: drop the load and processed/, keep the errors CSV written so far (if any);
        whether there is one."""
        self._settle()
        if self.load is not None:
            self.load.rollback()
        if self.processed is not None:
            self.processed.abort()
        if self.errors is None:
            self.identify()
            self.errors = self._errors_writer()
            for valid, block in self._waiting:
                if not valid:
                    self.errors.write(block)
            self._waiting = []
        if self.errors.bytes_written:
            self.errors.close()
            return True
        self.errors.abort()
        return False

    def abort(self, error: BaseException | None = None) -> None:
        self._settle()
        self._waiting = []
        if self.processed is not None:
            self.processed.abort()
        if self.errors is not None:
            self.errors.abort()
        if self.load is not None:
            self.load.rollback(error)


def _hash_known(attempt: _Attempt, spool: Spool | None) -> str:
    """The file's MD5: known already, or the spool's once it has every byte (waiting for it)."""
    if attempt.md5 is None:
        assert spool is not None
        attempt.md5 = spool.md5()
        logger.append_keys(md5=attempt.md5)
    return attempt.md5


def _ask_ledger(attempt: _Attempt, deps: Dependencies) -> None:
    """Raise _Decided if this content was loaded into this table, or rejected under this contract, before."""
    contract = attempt.contract
    assert contract is not None and attempt.md5 is not None
    bucket, key = attempt.bucket, attempt.key
    earlier = deps.database.earlier_outcome(attempt.md5, contract.target, bucket, key, contract.fingerprint)
    if earlier is not None and earlier.status == "loaded":
        raise _Decided("duplicate_content", _loaded_already(attempt, earlier.bucket, earlier.object_key))
    if earlier is not None:  # a second delivery of a rejected file: the same contract would say the same
        raise _Decided("already_rejected", _rejected_already(attempt, earlier))


def _rejected_already(attempt: _Attempt, earlier: EarlierOutcome) -> str:
    contract = attempt.contract
    assert contract is not None
    return (
        f"this content (md5 {attempt.md5}) of s3://{attempt.bucket}/{attempt.key} was rejected ({earlier.reason}) "
        f"under the same contract {contract.name!r} (ledger id {earlier.id}); change the contract or the file "
        "to have it judged again"
    )


def _ingest_identified(attempt: _Attempt, deps: Dependencies, info: ObjectInfo, spool: Spool | None) -> Receipt:
    bucket, key = attempt.bucket, attempt.key
    if attempt.md5 is not None:
        logger.append_keys(md5=attempt.md5)
    try:
        check_key(key)
        attempt.contract = choose_contract(deps.contracts, key)
    except FileRejected as rejection:
        _hash_known(attempt, spool)
        return _rejected(attempt, deps, rejection)

    contract = attempt.contract
    # The columnar engine first; should it meet something only the exact engine reads exactly, everything
    # it started is undone and the exact engine starts again from the first byte.
    for engine in ENGINES:
        digest = hashlib.md5(usedforsecurity=False)
        outputs = _Outputs(attempt, deps, info, spool)
        attempt.outcome = Outcome()
        try:
            if attempt.md5 is not None:  # known already: the ledger first, before a byte is read
                outputs.identify()
            outputs.prepare()
            if spool is not None:
                chunks = spool.chunks()
            else:
                chunks = _hashed(deps.store.download(bucket, key, info.etag, attempt.deadline), digest)
            process(
                _until(chunks, attempt.deadline),
                contract,
                outputs.valid,
                outputs.error,
                attempt.outcome,
                engine=engine,
                size=info.size,
            )
            outputs.open()  # a file shorter than its hash took: the MD5 and the ledger now
        except _Decided as decided:
            outputs.abort()
            return _skipped(attempt, deps, decided.reason, decided.message)
        except ExactEngineNeeded as handover:
            outputs.abort(handover)
            logger.info("handing the file to the exact engine", extra={"detail": str(handover)})
            continue
        except FileRejected as rejection:
            # An early rejection has not read every byte, so the ETag's MD5 stands unverified here; GetObject's
            # IfMatch still guarantees these were the bytes of that ETag.
            try:
                has_errors_csv = outputs.errors_only()
            except _Decided as decided:
                return _skipped(attempt, deps, decided.reason, decided.message)
            errors_csv = errors_keys(contract.target, attempt.md5 or "")[0] if has_errors_csv else None
            return _rejected(attempt, deps, rejection, errors_csv=errors_csv)
        except BaseException as exc:
            outputs.abort(exc)
            if not attempt.past_deadline:
                with suppress(Exception):  # the failure's record names the content, unless its download failed
                    _hash_known(attempt, spool)
            raise
        break
    load, processed, errors = outputs.load, outputs.processed, outputs.errors
    assert load is not None and processed is not None and errors is not None and attempt.md5 is not None
    md5 = attempt.md5
    errors_csv_key = errors_keys(contract.target, md5)[0]
    if spool is None and digest.hexdigest() != md5:  # an ETag that looked like an MD5 but was not one (SSE-KMS)
        outputs.abort()
        raise ContentChanged()

    try:
        # The processed/ object is completed while the load finishes (the rest of the COPY, the merge, the
        # ledger row); the load commits only once the object is there.
        processed_closed = processed.close_in_background()
        if attempt.outcome.rows_rejected:
            errors.close()
            _write_summary(attempt, deps, "loaded", errors_csv=errors_csv_key)
        else:
            errors.abort()
        lag = metrics.lag_seconds(attempt.event_time, datetime.now(UTC))  # the commit's moment, give or take
        ledger_id = load.commit(
            _ledger_entry(
                attempt,
                deps,
                processed_key=processed_key(contract.target, md5),
                errors_key=errors_csv_key if attempt.outcome.rows_rejected else None,
                lag_ms=int(lag * 1000) if lag is not None else None,
            ),
            before_commit=lambda: wait_until_deadline(processed_closed, attempt.deadline, processed.key),
        )
    except BaseException as exc:
        load.rollback(exc)
        raise
    if ledger_id is None:
        message = _loaded_already(attempt, bucket, "(a concurrent delivery of the same content)")
        return _skipped(attempt, deps, "duplicate_content", message)
    attempt.committed = datetime.now(UTC)
    outcome = attempt.outcome
    logger.info(
        "loaded",
        extra={
            "rows_loaded": load.rows_loaded,
            "rows_rejected": outcome.rows_rejected,
            "table": contract.target,
            "duration_ms": attempt.duration_ms,
        },
    )
    return _receipt(
        attempt,
        "loaded",
        rows_loaded=load.rows_loaded,
        schema_changes=load.schema_changes,
        processed_key=processed_key(contract.target, md5),
        errors_key=errors_csv_key if outcome.rows_rejected else None,
        summary_key=errors_keys(contract.target, md5)[1] if outcome.rows_rejected else None,
    )


def _receipt(attempt: _Attempt, status: str, **extra: Any) -> Receipt:
    outcome = attempt.outcome
    contract = attempt.contract
    return Receipt(
        status=status,
        bucket=attempt.bucket,
        key=attempt.key,
        md5=attempt.md5,
        contract=contract.name if contract else None,
        table=contract.target if contract else None,
        rows_total=outcome.rows_total,
        rows_valid=outcome.rows_valid,
        rows_rejected=outcome.rows_rejected,
        duration_ms=attempt.duration_ms,
        errors=[error_dict(e) for e in outcome.first_errors[:ERRORS_IN_RECEIPT]],
        **extra,
    )


def _ledger_entry(attempt: _Attempt, deps: Dependencies, **extra: Any) -> dict[str, Any]:
    outcome, fmt, contract = attempt.outcome, attempt.outcome.text_format, attempt.contract
    return {
        "md5": attempt.md5 or "",
        "bucket": attempt.bucket,
        "object_key": attempt.key,
        "contract": contract.name if contract else None,
        "contract_sha256": contract.fingerprint or None if contract else None,
        "table_name": contract.target if contract else None,
        "rows_total": outcome.rows_total,
        "rows_valid": outcome.rows_valid,
        "rows_rejected": outcome.rows_rejected,
        "size_bytes": attempt.size,
        "encoding": fmt.encoding if fmt else None,
        "delimiter": fmt.delimiter if fmt else None,
        "compression": fmt.compression if fmt else None,
        "request_id": attempt.request_id,
        "started_at": attempt.started_at,
        "duration_ms": attempt.duration_ms,
        **extra,
    }


def _write_summary(
    attempt: _Attempt, deps: Dependencies, status: str, errors_csv: str | None, rejection: FileRejected | None = None
) -> str:
    table = attempt.contract.target if attempt.contract else None
    _csv_key, summary_key = errors_keys(table, attempt.md5 or "unhashed")
    document = summary_document(
        bucket=attempt.bucket,
        key=attempt.key,
        md5=attempt.md5 or "",
        contract=attempt.contract,
        status=status,
        outcome=attempt.outcome,
        reason=rejection.reason if rejection else None,
        message=rejection.message if rejection else None,
        errors_key=errors_csv,
    )
    deps.store.put(deps.output_bucket or attempt.bucket, summary_key, document, "application/json", attempt.deadline)
    return summary_key


def _rejected(attempt: _Attempt, deps: Dependencies, rejection: FileRejected, errors_csv: str | None = None) -> Receipt:
    summary_key = _write_summary(attempt, deps, "rejected", errors_csv, rejection)
    earlier = deps.database.record_rejection(
        {
            **_ledger_entry(attempt, deps, errors_key=summary_key),
            "reason": rejection.reason,
            "error": rejection.message,
        },
        _ledger_until(attempt),
    )
    if earlier is not None:  # another delivery of this file rejected it meanwhile, and recorded it first
        return _skipped(attempt, deps, "already_rejected", _rejected_already(attempt, earlier))
    logger.warning("rejected", extra={"reason": rejection.reason, "detail": rejection.message})
    return _receipt(
        attempt,
        "rejected",
        reason=rejection.reason,
        message=rejection.message,
        errors_key=errors_csv,
        summary_key=summary_key,
    )


def _loaded_already(attempt: _Attempt, loaded_bucket: str, loaded_key: str) -> str:
    table = attempt.contract.target if attempt.contract else None
    return (
        f"this content (md5 {attempt.md5}) was already loaded into table {table} from s3://{loaded_bucket}/{loaded_key}"
    )


def _skipped(attempt: _Attempt, deps: Dependencies, reason: str, message: str) -> Receipt:
    logger.info("skipped", extra={"detail": message})
    attempt.outcome = Outcome()
    entry = {**_ledger_entry(attempt, deps), "status": "skipped", "reason": reason, "error": message}
    deps.database.record(entry, _ledger_until(attempt))
    return _receipt(attempt, "skipped", reason=reason, message=message)


def _failed(attempt: _Attempt, deps: Dependencies, exc: BaseException) -> Receipt:
    o = attempt.outcome
    how_far = (
        f"after {attempt.duration_ms / 1000:.1f} s, having read {o.rows_total:,} rows and {o.bytes_read:,} of "
        f"{attempt.size or 0:,} bytes; nothing was loaded and the delivery will be retried"
    )
    if isinstance(exc, DeadlineReached):
        reason = "timeout"
        message = bounded(f"stopped at the function's own deadline {how_far} ({exc})", FAILURE_MESSAGE_CHARS)
    elif isinstance(exc, TableBusy):
        reason = "table_busy"
        message = bounded(f"{exc}; stopped at the function's own deadline {how_far}", FAILURE_MESSAGE_CHARS)
    elif isinstance(exc, FunctionDied):
        reason, message = "function_died", bounded(str(exc), FAILURE_MESSAGE_CHARS)
    elif isinstance(exc, ServiceUnreachable):
        reason = exc.reason
        message = bounded(f"{exc}; nothing was loaded and the delivery will be retried", FAILURE_MESSAGE_CHARS)
    elif isinstance(exc, ContractTableMismatch):
        reason = "contract_table_mismatch"
        message = bounded(f"{exc}: ingest replay s3://{attempt.bucket}/{attempt.key}")
    else:
        reason, message = "error", bounded(f"{type(exc).__name__}: {exc}", FAILURE_MESSAGE_CHARS)
    logger.exception("failed", extra={"detail": message, "reason": reason})
    if isinstance(exc, DatabaseUnreachable):  # the ledger row would wait for the same connection again
        return _receipt(attempt, "failed", reason=reason, message=message)
    try:
        deps.database.record(
            {
                **_ledger_entry(attempt, deps),
                "md5": attempt.md5 or "unknown",
                "status": "failed",
                "reason": reason,
                "error": message,
            },
            _ledger_until(attempt),
        )
    except Exception:
        logger.warning("could not record the failure in the ledger", exc_info=True)
    return _receipt(attempt, "failed", reason=reason, message=message)


def _ledger_until(attempt: _Attempt) -> float | None:
    """When an outcome's own ledger row must be written by: half the time left before the invocation ends,
    so that a write stuck on a lock still leaves its receipt the other half to be published."""
    if attempt.ends is None:
        return None
    now = time.monotonic()
    return now + max(attempt.ends - now, 0.0) * LEDGER_SHARE


def _metrics(attempt: _Attempt, receipt: Receipt) -> None:
    try:
        metrics.emit(receipt, attempt.size, attempt.event_time, attempt.committed)
    except Exception:  # a metric is never worth a file
        logger.warning("could not write the file's metrics", exc_info=True)


def _publish(notifier: Notifier, receipt: Receipt, until: float | None) -> None:
    """Publish the receipt; one that cannot go out is logged whole (the ledger row holds the outcome, and a
    retry would not load the file again: it is not raised)."""
    try:
        notifier.publish(receipt, until)
    except ServiceUnreachable as exc:
        logger.error(
            "could not publish the receipt",
            extra={"reason": exc.reason, "detail": str(exc), "receipt": receipt.to_dict()},
        )
    except Exception:
        logger.exception("could not publish the receipt", extra={"receipt": receipt.to_dict()})
