"""The use case: ingest one S3 object. Wires the pure core to the adapters; owns no I/O of its own.

Order matters for the promises the pipeline makes:
1. the object's MD5 decides whether it was loaded already (then ``skipped``);
2. processing streams the object once: valid rows go to COPY (staging) and to ``processed/``, rejected
   rows to ``errors/`` (an object whose ETag is no MD5 is hashed first, and its bytes kept in a local
   temporary file for processing when there is room, so that S3 is read once);
3. outputs are completed *before* the commit, so a crash can lose neither a load's report nor the load;
4. the merge and the ledger row commit together, so a retry after any failure loads exactly once.
Rejected files are final (a retry would reject them again); failures are raised so the delivery retries.

A deadline (from the Lambda context's remaining time, less a margin) ends a file that cannot be finished
in time: the load is rolled back, the ledger gets ``failed``/``timeout`` with how far it got, the receipt
goes out, and the failure is raised so the delivery is retried and in the end dead-lettered, on record.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .adapters.postgres import Database, DatabaseUnreachable, Load
from .adapters.s3 import ObjectInfo, ObjectStore, Spool, StreamingWriter
from .adapters.sns import Notifier
from .columnar import ExactEngineNeeded
from .contract import Contract, ContractRegistry
from .evolution import ContractTableMismatch
from .log import logger
from .processing import Outcome, error_dict, process, summary_document
from .receipt import ERRORS_IN_RECEIPT, Receipt
from .rejection import FileRejected

UNMATCHED_PREFIX = "_unmatched"
MAX_KEY_LENGTH = 1024


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

    @property
    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class DeadlineReached(Exception):
    """The function's own deadline passed before the file was finished; nothing of it was committed."""


def _until(chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
    for chunk in chunks:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineReached("the deadline passed while the file was being read")
        yield chunk


class ContentChanged(Exception):
    """The bytes read did not hash to the MD5 the ETag promised: hash them properly and start again."""


def _hashed(chunks: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _tee(*sinks: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def write(block: bytes) -> None:
        for sink in sinks:
            sink(block)

    return write


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
    bucket: str, key: str, deps: Dependencies, request_id: str | None = None, deadline: float | None = None
) -> Receipt:
    """Ingest one object and publish its receipt. Raises (after publishing ``failed``) on failures.

    ``deadline``: a ``time.monotonic()`` value by which the work must stop (a timeout, recorded as such)."""
    attempt = _Attempt(bucket=bucket, key=key, request_id=request_id, deadline=deadline)
    logger.append_keys(bucket=bucket, key=key, md5=None)
    try:
        try:
            receipt = _ingest(attempt, deps, trust_etag=True)
        except ContentChanged:
            logger.warning("content did not match its ETag; hashing it and starting again")
            receipt = _ingest(attempt, deps, trust_etag=False)
    except Exception as exc:
        if attempt.past_deadline and not isinstance(exc, DeadlineReached):
            exc = DeadlineReached(f"the deadline passed ({type(exc).__name__}: {exc})")
        receipt = _failed(attempt, deps, exc)
        _publish(deps, receipt)
        raise exc from None
    _publish(deps, receipt)
    return receipt


def _ingest(attempt: _Attempt, deps: Dependencies, trust_etag: bool) -> Receipt:
    bucket, key = attempt.bucket, attempt.key
    info = deps.store.head(bucket, key)
    attempt.size = info.size
    spool: Spool | None = None
    if trust_etag and info.etag_md5:
        attempt.md5 = info.etag_md5
    else:  # a multipart upload's ETag is no MD5: hash the bytes, and keep them locally if there is room
        attempt.md5, spool = deps.store.hash_and_spool(bucket, key, info.etag, info.size)
    try:
        return _ingest_hashed(attempt, deps, info, spool)
    finally:
        if spool is not None:
            spool.close()


def _ingest_hashed(attempt: _Attempt, deps: Dependencies, info: ObjectInfo, spool: Spool | None) -> Receipt:
    bucket, key = attempt.bucket, attempt.key
    assert attempt.md5 is not None
    logger.append_keys(md5=attempt.md5)
    try:
        check_key(key)
        attempt.contract = choose_contract(deps.contracts, key)
    except FileRejected as rejection:
        return _rejected(attempt, deps, rejection)

    contract = attempt.contract
    earlier = deps.database.earlier_outcome(attempt.md5, contract.table, bucket, key, contract.fingerprint)
    if earlier is not None and earlier.status == "loaded":
        return _skipped(
            attempt, deps, "duplicate_content", _loaded_already(attempt, earlier.bucket, earlier.object_key)
        )
    if earlier is not None:  # a second delivery of a rejected file: the same contract would say the same
        message = (
            f"this content (md5 {attempt.md5}) of s3://{bucket}/{key} was rejected ({earlier.reason}) under "
            f"the same contract {contract.name!r} (ledger id {earlier.id}); change the contract or the file "
            "to have it judged again"
        )
        return _skipped(attempt, deps, "already_rejected", message)

    md5 = attempt.md5
    out_bucket = deps.output_bucket or bucket
    errors_csv_key, _summary_key = errors_keys(contract.table, md5)
    # The columnar engine first; should it meet something only the exact engine reads exactly, everything
    # it started is undone and the exact engine starts again from the first byte.
    for engine in ("auto", "exact"):
        digest = hashlib.md5(usedforsecurity=False)
        load: Load = deps.database.begin_load(contract, md5, deadline=attempt.deadline, size_bytes=info.size or 0)
        processed: StreamingWriter = deps.store.writer(out_bucket, processed_key(contract.table, md5), "text/csv")
        errors: StreamingWriter = deps.store.writer(out_bucket, errors_csv_key, "text/csv")
        attempt.outcome = Outcome()
        try:
            chunks = spool.chunks() if spool else _hashed(deps.store.chunks(bucket, key, etag=info.etag), digest)
            process(
                _until(chunks, attempt.deadline),
                contract,
                _tee(load.write, processed.write),
                errors.write,
                attempt.outcome,
                engine=engine,
                size=info.size,
            )
        except ExactEngineNeeded as handover:
            processed.abort()
            errors.abort()
            load.rollback(handover)
            logger.info("handing the file to the exact engine", extra={"detail": str(handover)})
            continue
        except FileRejected as rejection:
            # An early rejection has not read every byte, so the ETag's MD5 stands unverified here; GetObject's
            # IfMatch still guarantees these were the bytes of that ETag.
            processed.abort()
            load.rollback(rejection)
            if errors.bytes_written:
                errors.close()
            else:
                errors.abort()
            return _rejected(attempt, deps, rejection, errors_csv=errors_csv_key if errors.bytes_written else None)
        except BaseException as exc:
            processed.abort()
            errors.abort()
            load.rollback(exc)
            raise
        break
    if spool is None and digest.hexdigest() != md5:  # an ETag that looked like an MD5 but was not one (SSE-KMS)
        processed.abort()
        errors.abort()
        load.rollback()
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
        ledger_id = load.commit(
            _ledger_entry(
                attempt,
                deps,
                processed_key=processed_key(contract.table, md5),
                errors_key=errors_csv_key if attempt.outcome.rows_rejected else None,
            ),
            before_commit=processed_closed.result,
        )
    except BaseException as exc:
        load.rollback(exc)
        raise
    if ledger_id is None:
        message = _loaded_already(attempt, bucket, "(a concurrent delivery of the same content)")
        return _skipped(attempt, deps, "duplicate_content", message)
    outcome = attempt.outcome
    logger.info(
        "loaded",
        extra={
            "rows_loaded": load.rows_loaded,
            "rows_rejected": outcome.rows_rejected,
            "table": contract.table,
            "duration_ms": attempt.duration_ms,
        },
    )
    return _receipt(
        attempt,
        "loaded",
        rows_loaded=load.rows_loaded,
        schema_changes=load.schema_changes,
        processed_key=processed_key(contract.table, md5),
        errors_key=errors_csv_key if outcome.rows_rejected else None,
        summary_key=errors_keys(contract.table, md5)[1] if outcome.rows_rejected else None,
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
        table=contract.table if contract else None,
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
        "table_name": contract.table if contract else None,
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
    table = attempt.contract.table if attempt.contract else None
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
    deps.store.put(deps.output_bucket or attempt.bucket, summary_key, document, "application/json")
    return summary_key


def _rejected(attempt: _Attempt, deps: Dependencies, rejection: FileRejected, errors_csv: str | None = None) -> Receipt:
    logger.warning("rejected", extra={"reason": rejection.reason, "detail": rejection.message})
    summary_key = _write_summary(attempt, deps, "rejected", errors_csv, rejection)
    deps.database.record(
        {
            **_ledger_entry(attempt, deps, errors_key=summary_key),
            "status": "rejected",
            "reason": rejection.reason,
            "error": rejection.message,
        }
    )
    return _receipt(
        attempt,
        "rejected",
        reason=rejection.reason,
        message=rejection.message,
        errors_key=errors_csv,
        summary_key=summary_key,
    )


def _loaded_already(attempt: _Attempt, loaded_bucket: str, loaded_key: str) -> str:
    table = attempt.contract.table if attempt.contract else None
    return (
        f"this content (md5 {attempt.md5}) was already loaded into table {table} from s3://{loaded_bucket}/{loaded_key}"
    )


def _skipped(attempt: _Attempt, deps: Dependencies, reason: str, message: str) -> Receipt:
    logger.info("skipped", extra={"detail": message})
    attempt.outcome = Outcome()
    deps.database.record({**_ledger_entry(attempt, deps), "status": "skipped", "reason": reason, "error": message})
    return _receipt(attempt, "skipped", reason=reason, message=message)


def _failed(attempt: _Attempt, deps: Dependencies, exc: BaseException) -> Receipt:
    if isinstance(exc, DeadlineReached):
        reason, o = "timeout", attempt.outcome
        message = (
            f"stopped at the function's own deadline after {attempt.duration_ms / 1000:.1f} s, having read "
            f"{o.rows_total:,} rows and {o.bytes_read:,} of {attempt.size or 0:,} bytes; nothing was loaded "
            f"and the delivery will be retried ({exc})"
        )[:2000]
    elif isinstance(exc, DatabaseUnreachable):
        reason = "database_unreachable"
        message = f"{exc}; nothing was loaded and the delivery will be retried"[:2000]
    elif isinstance(exc, ContractTableMismatch):
        reason = "contract_table_mismatch"
        message = f"{exc}: ingest replay s3://{attempt.bucket}/{attempt.key}"[:4000]
    else:
        reason, message = "error", f"{type(exc).__name__}: {exc}"[:2000]
    logger.exception("failed", extra={"detail": message, "reason": reason})
    try:
        deps.database.record(
            {
                **_ledger_entry(attempt, deps),
                "md5": attempt.md5 or "unknown",
                "status": "failed",
                "reason": reason,
                "error": message,
            }
        )
    except Exception:
        logger.warning("could not record the failure in the ledger", exc_info=True)
    return _receipt(attempt, "failed", reason=reason, message=message)


def _publish(deps: Dependencies, receipt: Receipt) -> None:
    try:
        deps.notifier.publish(receipt)
    except Exception:
        logger.exception("could not publish the receipt", extra={"receipt": receipt.to_dict()})
