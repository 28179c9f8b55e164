"""From a stream of bytes to CSV records, in bounded memory and without I/O of its own.

The object arrives as an iterable of byte chunks. This module undoes gzip, bzip2 or xz, recognises a BOM,
decides the text encoding from a sample (UTF-8, else cp1252, else latin-1), refuses what is not text, sniffs the
delimiter, and yields ``(line_number, fields)`` for every non-blank record, the line number being the
physical source line where the record starts (quoted fields may span lines).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import io
import itertools
import lzma
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .rejection import FileRejected

SAMPLE_BYTES = 256 * 1024
READ_BYTES = 1024 * 1024
DELIMITERS = (",", ";", "\t", "|")
#: How quotes read: "csv", the double quotes of RFC 4180 (a field may hold the delimiter, a quote doubled,
#: a line break); "none", quotes are characters like any other (many TSV exports: IMDb's datasets).
QUOTING_MODES = ("csv", "none")
LITERAL_QUOTES_ADVICE = (
    '; should the quotes of this file be characters, not CSV quoting (as in many TSV exports), set quoting = "none" '
    "in its contract"
)
#: The advice instead, for a file whose sample quotes some field as CSV does: there a stray quote is a mistake
#: in one line, and quoting = "none" would keep every quoted field's quotes as characters.
STRAY_QUOTE_ADVICE = (
    '; the file quotes other fields as CSV does ("…"), so a quote here is most likely unbalanced: mend that '
    'line (quoting = "none" would keep the quotes of every quoted field as characters)'
)
#: And for a file whose header is quoted names between spaces, as R's write.table writes: no delimiter read.
SPACE_SEPARATED_ADVICE = (
    '; the file looks space-separated ("a" "b" "c", as R\'s write.table writes), and the loader reads , ; tab '
    'and | only: write it with write.csv, or sep = ","'
)
#: The advice a malformed CSV gets, by the quotes its sample shows (TextFormat.quotes_seen).
QUOTE_ADVICE = {"": LITERAL_QUOTES_ADVICE, "csv": STRAY_QUOTE_ADVICE, "space_separated": SPACE_SEPARATED_ADVICE}
#: A first line such as "sep=;": a hint some exports write for spreadsheets, naming the delimiter. The
#: file's header is the line after it.
DELIMITER_HINT = re.compile(r"\ufeff?sep=(.)(?:\r\n|\r|\n)")
#: What ends a line, for the lines before the header (as Python's csv module and universal newlines see it).
LINE_END = re.compile(r"\r\n|\r|\n")
#: The largest single field accepted, in characters. A larger one rejects the file (csv cannot resume).
MAX_FIELD_CHARS = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
#: Streams other than gzip that are undone, by their first bytes: bzip2 and xz, as public data sets ship
#: them (.csv.bz2, .csv.xz), concatenated streams too (pbzip2 writes them). bzip2's magic is "BZh", a block
#: size digit and the magic of a block (or of the empty stream's end): a text that begins "BZh" is text.
STREAM_MAGIC = {
    re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)", re.DOTALL): "bzip2",
    re.compile(rb"\xfd7zXZ\x00"): "xz",
}
#: Every compression a file may arrive in (its reasons: truncated_<kind>, corrupt_<kind>).
COMPRESSED_KINDS = ("gzip", *STREAM_MAGIC.values())
HEAD_BYTES = 10  # the longest magic
#: Compressed formats recognised but not read, by their first bytes: a clear refusal rather than "not text".
UNREAD_MAGIC = {
    b"PK\x03\x04": "a zip archive (unzip it and upload the CSV inside, or gzip it)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed (recompress it with gzip, bzip2 or xz)",
}

csv.field_size_limit(MAX_FIELD_CHARS)
#: The longest line the exact engine reads (16 fields at the field limit): memory stays flat whatever the file.
MAX_LINE_CHARS = 16 * MAX_FIELD_CHARS


@dataclass(frozen=True)
class TextFormat:
    """What the reader found out about the bytes; recorded in the ledger and the summary."""

    encoding: str  # utf-8, utf-16, cp1252 or latin-1
    bom: bool
    compression: str | None  # "gzip", "bzip2", "xz" or None
    delimiter: str
    delimiter_hint: bool = False  # the first line was a spreadsheet's "sep=;" hint, no record of the file
    skip_lines: int = 0  # lines before the header that are no part of the table (the contract's skip_lines)
    quoting: str = "csv"  # one of QUOTING_MODES (the contract's quoting)
    #: "csv": the sample quotes some field as CSV does ("…" from delimiter to delimiter); "space_separated": its
    #: header is quoted names between spaces (R's write.table); "": neither
    quotes_seen: str = ""

    @property
    def lines_before_header(self) -> int:
        """The lines read as lines, no records: the delimiter hint's, then the ones the contract skips."""
        return int(self.delimiter_hint) + self.skip_lines

    @property
    def quoted(self) -> bool:
        """Whether quotes quote (CSV's), rather than being characters like any other."""
        return self.quoting == "csv"

    @property
    def csv_options(self) -> dict[str, Any]:
        """The options of Python's csv module that read fields this way."""
        return csv_options(self.delimiter, self.quoting)


def csv_options(delimiter: str, quoting: str = "csv") -> dict[str, Any]:
    return {"delimiter": delimiter, "quoting": csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL}


class _ChunkStream(io.RawIOBase):
    """A raw, read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _GunzipStream(io.RawIOBase):
    """Streams gzip members out of a raw stream; a truncated or corrupt gzip becomes a rejection."""

    def __init__(self, raw: io.BufferedReader):
        self._raw = raw
        self._zlib = zlib.decompressobj(wbits=31)
        self._fed = False  # has the current member's decompressor seen any input?
        self._input = b""
        self._out = b""
        self.compressed_offset = 0

    def readable(self) -> bool:
        return True

    @property
    def consumed(self) -> int:
        """Compressed bytes the decompressor has taken in so far."""
        return self.compressed_offset - len(self._input)

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._out:
            if not self._input:
                self._input = self._raw.read(READ_BYTES)
                self.compressed_offset += len(self._input)
                if not self._input:
                    if self._fed and not self._zlib.eof:
                        raise FileRejected(
                            "truncated_gzip",
                            f"the gzip stream ends before its end marker (after {self.compressed_offset} "
                            "compressed bytes): the upload is truncated",
                        )
                    return 0
            if self._zlib.eof:  # concatenated members are legal gzip
                self._zlib = zlib.decompressobj(wbits=31)
                self._fed = False
                if not self._input.strip(b"\x00"):
                    self._input = b""  # trailing zero padding
                    continue
            try:
                self._out = self._zlib.decompress(self._input, READ_BYTES)
            except zlib.error as exc:
                raise FileRejected("corrupt_gzip", f"the gzip stream is corrupt: {exc}") from None
            self._fed = True
            self._input = self._zlib.unconsumed_tail or self._zlib.unused_data
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


class _StreamDecompressor(io.RawIOBase):
    """Streams bzip2 or xz out of a raw stream (concatenated streams too); a truncated or corrupt one becomes
    a rejection, as for gzip. Both of Python's decompressors keep what they were given until it is read out
    (``max_length``), so the compressed bytes taken in are counted as they are handed over."""

    def __init__(self, raw: io.BufferedIOBase, kind: str):
        self._raw, self.kind = raw, kind
        self._new: Callable[[], Any] = bz2.BZ2Decompressor if kind == "bzip2" else lzma.LZMADecompressor
        self._decompressor = self._new()
        self._fed = False  # has the current stream's decompressor seen any input?
        self._left = b""  # bytes after a finished stream: the next one's
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while True:
            if self._decompressor.eof:  # concatenated streams are legal; zero bytes after one are padding
                self._left = self._decompressor.unused_data.lstrip(b"\x00")
                self._decompressor, self._fed = self._new(), False
            data = b""
            if self._decompressor.needs_input:
                if self._left:
                    data, self._left = self._left, b""
                else:
                    data = self._raw.read(READ_BYTES)
                    self.consumed += len(data)
                if not data:
                    if self._fed:
                        raise FileRejected(
                            f"truncated_{self.kind}",
                            f"the {self.kind} stream ends before its end marker (after {self.consumed} compressed "
                            "bytes): the upload is truncated",
                        )
                    return 0
            try:
                out = self._decompressor.decompress(data, len(buffer))
            except (OSError, EOFError, lzma.LZMAError) as exc:
                raise FileRejected(f"corrupt_{self.kind}", f"the {self.kind} stream is corrupt: {exc}") from None
            self._fed = True
            if out:
                buffer[: len(out)] = out
                return len(out)


def _drain(stream: io.BufferedIOBase) -> Iterator[bytes]:
    return iter(lambda: stream.read(READ_BYTES), b"")


@dataclass
class Source:
    """An object's bytes after the sample was inspected: what was found, and the bytes, still streaming."""

    text_format: TextFormat
    codec: str  # the Python codec to decode the bytes with (utf-8-sig strips the BOM)
    sample: bytes
    rest: Iterator[bytes]
    compressed_consumed: Callable[[], int] | None = None  # compressed bytes taken in so far (compressed only)

    def chunks(self) -> Iterator[bytes]:
        yield self.sample
        yield from self.rest


def inspect(chunks: Iterable[bytes], skip_lines: int = 0, quoting: str = "csv") -> Source:
    """Undo gzip, bzip2 or xz and decide encoding and delimiter from a sample; refuse what is not text.
    ``skip_lines``: lines before the header (after a delimiter hint line, if any) that are no part of the
    table, such as a title or a source note; the delimiter is judged from the lines after them, read with
    ``quoting``."""
    head, rest = _split_bytes(iter(chunks), HEAD_BYTES)
    chunks = itertools.chain([head], rest)  # every byte, the head too
    consumed = None
    unread = next((what for magic, what in UNREAD_MAGIC.items() if head.startswith(magic)), None)
    if unread:
        raise FileRejected("unsupported_compression", f"the object is {unread}: the loader reads gzip, bzip2 and xz")
    streamed = next((kind for magic, kind in STREAM_MAGIC.items() if magic.match(head)), None)
    compression = "gzip" if head.startswith(GZIP_MAGIC) else streamed
    if compression is None:  # the chunks as they come, after the sample: no copy through a reader
        sample, rest = _split_bytes(chunks, SAMPLE_BYTES)
    else:
        raw = io.BufferedReader(_ChunkStream(chunks), READ_BYTES)
        stream = _GunzipStream(raw) if compression == "gzip" else _StreamDecompressor(raw, compression)  # type: ignore[arg-type]
        consumed = lambda: stream.consumed  # noqa: E731
        decompressed = io.BufferedReader(stream, READ_BYTES)  # type: ignore[arg-type]
        sample, rest = decompressed.read(SAMPLE_BYTES), _drain(decompressed)
    if not sample:
        what = "decompresses to nothing" if compression else "is empty (0 bytes)"
        raise FileRejected("empty_object", f"the object {what}")
    codec, bom = detect_encoding(sample)
    text_sample = sample.decode(codec, errors="ignore")
    if not text_sample.strip("\ufeff \t\r\n"):
        raise FileRejected("no_header", "the object holds only whitespace: no header line")
    hint = DELIMITER_HINT.match(text_sample)
    if hint and hint[1] not in DELIMITERS:
        raise FileRejected(
            "no_header",
            f"the first line names the delimiter {hint[1]!r} (sep={hint[1]}), which the loader does not read; "
            f"it reads {', '.join(repr(d) for d in DELIMITERS)}",
        )
    table = after_lines(text_sample, int(hint is not None) + skip_lines)  # from the header on
    delimiter = hint[1] if hint else sniff_delimiter(table, quoting)
    text_format = TextFormat(
        encoding=codec.removesuffix("-sig"),
        bom=bom,
        compression=compression,
        delimiter=delimiter,
        delimiter_hint=hint is not None,
        skip_lines=skip_lines,
        quoting=quoting,
        quotes_seen=_quotes_seen(table, delimiter),
    )
    return Source(text_format, codec, sample, rest, consumed)


def _quotes_seen(text: str, delimiter: str) -> str:
    """How the quotes of ``text`` (from its header on) read: "space_separated" where its first line is quoted
    names between spaces; "csv" where some field is quoted as CSV quotes (a quote after a delimiter or at a
    line's start, doubled quotes or none inside, a quote before a delimiter or at the line's end); else ""."""
    if '"' not in text:
        return ""  # most files: no quote to look at (the search below would scan the whole sample for none)
    if re.match(r'"[^"\r\n]*"(?: "[^"\r\n]*")+\r?(?:\n|$)', text):
        return "space_separated"
    d = re.escape(delimiter)
    return "csv" if re.search(rf'(?:^|{d})"(?:[^"\r\n]|"")*"(?={d}|\r?$)', text, re.MULTILINE) else ""


def _split_bytes(chunks: Iterator[bytes], n: int) -> tuple[bytes, Iterator[bytes]]:
    """The first ``n`` bytes of the chunks (fewer if there are not as many), and an iterator of the rest."""
    first = bytearray()
    for chunk in chunks:
        if len(first) + len(chunk) >= n:
            cut = n - len(first)
            first += chunk[:cut]
            return bytes(first), itertools.chain([chunk[cut:]] if cut < len(chunk) else [], chunks)
        first += chunk
    return bytes(first), iter(())


def open_text(
    chunks: Iterable[bytes], skip_lines: int = 0, quoting: str = "csv"
) -> tuple[TextFormat, io.TextIOWrapper]:
    """Wrap byte chunks in a text stream, deciding compression, encoding and delimiter from a sample."""
    return text_stream(inspect(chunks, skip_lines, quoting))


def after_lines(text: str, lines: int) -> str:
    """``text`` after its first ``lines`` lines (empty if it has no more)."""
    position = 0
    for _ in range(lines):
        end = LINE_END.search(text, position)
        if end is None:
            return ""
        position = end.end()
    return text[position:]


def text_stream(source: Source) -> tuple[TextFormat, io.TextIOWrapper]:
    stream = io.BufferedReader(_ChunkStream(source.chunks()), READ_BYTES)
    text = io.TextIOWrapper(stream, encoding=source.codec, newline="", errors="strict")  # type: ignore[arg-type]
    text._CHUNK_SIZE = READ_BYTES  # type: ignore[attr-defined]  # fewer, larger decode calls
    return source.text_format, text


def detect_encoding(sample: bytes) -> tuple[str, bool]:
    """Return the codec to read the whole object with, and whether it starts with a BOM."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", True
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", True
    if _looks_binary(sample):
        raise FileRejected("binary_content", "the object is not text: it contains NUL or other control bytes")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8", False
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    # Not UTF-8. If it also holds well-formed multi-byte UTF-8, it is a UTF-8 file with a corrupt byte,
    # not a legacy-encoded one: reading it as cp1252 would silently turn every accent into mojibake.
    decoded = sample.decode("utf-8", errors="replace")
    if any(ord(ch) > 0x7F and ch != "\ufffd" for ch in decoded):
        line = sample.count(b"\n", 0, first_bad) + 1
        raise FileRejected(
            "invalid_encoding",
            f"the object is UTF-8 but byte {first_bad} (line {line}) is not valid UTF-8 "
            f"({sample[first_bad : first_bad + 4]!r})",
        )
    try:
        sample.decode("cp1252")
        return "cp1252", False
    except UnicodeDecodeError:
        return "latin-1", False


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    control = sum(sample.count(bytes([b])) for b in (*range(0, 9), *range(14, 27), *range(28, 32)))
    return control > len(sample) // 100


def sniff_delimiter(text: str, quoting: str = "csv") -> str:
    """Pick the delimiter among , ; tab | that splits the sample into the most consistent columns."""
    lines = text.splitlines(keepends=True)
    if len(lines) > 1:
        lines = lines[:-1]  # the last line of a sample may be cut short
    lines = lines[:50]
    best, best_score = ",", (0.0, 1)
    for delimiter in DELIMITERS:
        try:
            rows = [r for r in csv.reader(lines, **csv_options(delimiter, quoting)) if r]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        consistency = sum(len(r) == width for r in rows) / len(rows)
        score = (consistency, width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def read_records(text: io.TextIOBase, fmt: TextFormat) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every record that is a row (and first the header); malformed CSV
    rejects the file. With ``fmt.delimiter_hint``, line 1 is the delimiter hint: no record. The
    ``fmt.skip_lines`` lines after it are no records either, whatever they hold (a title, a note with an
    unbalanced quote): they are skipped as lines, before any CSV is read.

    Blank lines (empty or whitespace only) are no rows in a file of several columns: a row there has
    delimiters. In a one-column file (its header has one field) a line of whitespace is a row, and so is an
    empty line followed by a later record: that is how a spreadsheet exports an empty cell there, and how
    PostgreSQL's COPY reads it (a NULL). Only the empty lines after the last record (a file's trailing line
    breaks) and blank lines before the header are nothing."""
    one_column: bool | None = None  # known at the header
    held: list[tuple[int, list[str]]] = []  # a one-column file's empty lines, rows if a record follows
    skipped = fmt.lines_before_header
    for line in range(1, skipped + 1):
        content = text.readline(MAX_FIELD_CHARS + 2)
        if len(content) > MAX_FIELD_CHARS:
            raise FileRejected(
                "field_too_large", f"line {line}: a line before the header is longer than {MAX_FIELD_CHARS} characters"
            )
    for start, fields in _all_records(text, fmt, skipped):
        blank = not fields or (len(fields) == 1 and not fields[0].strip())
        if one_column is None:
            if blank:
                continue  # before the header
            one_column = len(fields) == 1
        elif one_column:
            if not fields:
                held.append((start, [""]))
                continue
            yield from held
            held.clear()
        elif blank:
            continue
        yield start, fields


def _bounded_lines(text: io.TextIOBase, lines_before: int) -> Iterator[str]:
    """The text's lines for the csv module, none longer than MAX_LINE_CHARS: the csv module takes a whole
    line before it applies its field limit, so one 300 MB line (a cell) was 300 MB of text, and more."""
    line_number = lines_before
    while line := text.readline(MAX_LINE_CHARS + 1):
        line_number += 1
        if len(line) > MAX_LINE_CHARS:
            raise FileRejected(
                "field_too_large",
                f"line {line_number}: a line longer than {MAX_LINE_CHARS:,} characters, which holds a field larger "
                f"than {MAX_FIELD_CHARS} characters (often an unbalanced quote that swallows the rest of the file)",
            )
        yield line


def _all_records(text: io.TextIOBase, fmt: TextFormat, lines_before: int) -> Iterator[tuple[int, list[str]]]:
    """Every record with the line it starts on (the file's, ``lines_before`` read already), blank ones too."""
    reader = csv.reader(_bounded_lines(text, lines_before), strict=True, **fmt.csv_options)
    if_literal = QUOTE_ADVICE[fmt.quotes_seen] if fmt.quoted else ""
    previous_line = lines_before
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = previous_line + 1
            if "field larger than field limit" in str(exc):
                raise FileRejected(
                    "field_too_large",
                    f"line {line}: a field is larger than {MAX_FIELD_CHARS} characters "
                    f"(often an unbalanced quote that swallows the rest of the file){if_literal}",
                ) from None
            raise FileRejected("malformed_csv", f"line {line}: malformed CSV: {exc}{if_literal}") from None
        except UnicodeDecodeError as exc:
            raise FileRejected(
                "invalid_encoding",
                f"near line {previous_line + 1}: bytes that are not valid {exc.encoding} "
                f"({exc.object[exc.start : exc.start + 4]!r})",
            ) from None
        start = previous_line + 1
        previous_line = lines_before + reader.line_num
        yield start, fields
