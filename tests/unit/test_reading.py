import bz2
import codecs
import gzip
import io
import lzma
import zipfile

import pytest

from ingest.reading import SAMPLE_BYTES, detect_encoding, inspect, open_text, read_records, sniff_delimiter
from ingest.rejection import FileRejected


def records(data: bytes, chunk: int = 0):
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    fmt, text = open_text(chunks)
    return fmt, list(read_records(text, fmt))


def test_crlf_lf_and_quoted_newlines_with_source_line_numbers():
    data = b'a,b\r\n1,"x\r\ny"\r\n\r\n2,z\n3,"q"\n'
    fmt, rows = records(data)
    assert rows == [(1, ["a", "b"]), (2, ["1", "x\r\ny"]), (5, ["2", "z"]), (6, ["3", "q"])]
    assert fmt.delimiter == ","


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_chunk_boundaries_do_not_matter(chunk):
    data = codecs.BOM_UTF8 + 'név,ort\n"Zoë, A",Köln\n'.encode()
    assert records(data, chunk) == records(data)
    fmt, rows = records(data, chunk)
    assert fmt.bom and fmt.encoding == "utf-8"
    assert rows[1] == (2, ["Zoë, A", "Köln"])


@pytest.mark.parametrize(("delimiter"), [",", ";", "\t", "|"])
def test_delimiter_is_sniffed(delimiter):
    text = delimiter.join(["id", "name", "note"]) + "\n" + delimiter.join(["1", "a,b", "c"]) + "\n"
    assert sniff_delimiter(text) == delimiter if delimiter != "," else True


def test_semicolon_file_with_commas_in_values_is_semicolon():
    assert sniff_delimiter("a;b;c\n1,5;2,5;x\n3,1;4,2;y\n") == ";"


def test_legacy_encodings_are_detected_and_recorded():
    assert detect_encoding("café;€\n".encode("cp1252")) == ("cp1252", False)
    assert detect_encoding(b"caf\xe9\x81\n") == ("latin-1", False)  # 0x81 is undefined in cp1252
    fmt, rows = records("name\nJosé\n".encode("cp1252"))
    assert fmt.encoding == "cp1252" and rows[1][1] == ["José"]


def test_utf16_with_bom():
    fmt, rows = records("a,b\n1,ü\n".encode("utf-16"))
    assert fmt.encoding == "utf-16" and rows == [(1, ["a", "b"]), (2, ["1", "ü"])]


def _zipped(data: bytes) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.csv", data)
    return archive.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_object"),
        (b"  \r\n\n", "no_header"),
        (b"\x00\x01\x02binary\x00" * 10, "binary_content"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary_content"),
        ("naïve,b\n1,\xff\n".encode("latin-1").replace(b"na\xefve", "naïve".encode()), "invalid_encoding"),
        (gzip.compress(b"a,b\n1,2\n" * 1000)[:-30], "truncated_gzip"),
        (gzip.compress(b""), "empty_object"),
        (bz2.compress(b"a,b\n1,2\n" * 1000)[:-30], "truncated_bzip2"),
        (bz2.compress(b"a,b\n1,2\n" * 1000)[:40] + b"not bzip2" * 10, "corrupt_bzip2"),
        (lzma.compress(b"a,b\n1,2\n" * 1000)[:-30], "truncated_xz"),
        (lzma.compress(b"a,b\n1,2\n" * 1000)[:40] + b"not xz" * 10, "corrupt_xz"),
        (bz2.compress(b""), "empty_object"),
        (_zipped(b"a,b\n1,2\n"), "unsupported_compression"),
        (b"\x28\xb5\x2f\xfd" + b"a,b\n1,2\n", "unsupported_compression"),  # zstd's magic
    ],
)
def test_what_is_not_a_csv_is_rejected_with_a_reason(data, reason):
    with pytest.raises(FileRejected) as info:
        records(data)
    assert info.value.reason == reason


def test_invalid_utf8_after_the_sample_is_rejected_with_its_line():
    data = b"a,b\n" + b"1,\xc3\xa9\n" * 100_000 + b"2,\xff\n"
    with pytest.raises(FileRejected) as info:
        records(data)
    assert info.value.reason == "invalid_encoding"


@pytest.mark.parametrize(
    ("compress", "name"), [(gzip.compress, "gzip"), (bz2.compress, "bzip2"), (lzma.compress, "xz")]
)
def test_compressed_files_are_streamed_and_concatenated_members_work(compress, name):
    # bzip2 and xz were refused as "not text" (public data sets ship as .csv.bz2 and .csv.xz)
    data = compress(b"a,b\n1,2\n") + compress(b"3,4\n") + b"\x00" * 4  # padding after the last stream
    fmt, rows = records(data, 5)
    assert fmt.compression == name
    assert rows == [(1, ["a", "b"]), (2, ["1", "2"]), (3, ["3", "4"])]
    # a stream far larger than a read, in chunks of any size
    body = b"".join(b"%d,x\n" % i for i in range(200_000))
    fmt, rows = records(compress(b"a,b\n" + body), 4096)
    assert len(rows) == 200_001 and rows[-1] == (200_001, ["199999", "x"])


def test_a_text_that_begins_like_a_compressed_stream_is_text():
    fmt, rows = records(b"BZh,value\n1,2\n")  # bzip2's magic is longer than its "BZh"
    assert fmt.compression is None and rows == [(1, ["BZh", "value"]), (2, ["1", "2"])]


def test_unbalanced_quote_rejects_the_file():
    with pytest.raises(FileRejected) as info:
        records(b'a,b\n1,"never closed\n2,3\n')
    assert info.value.reason == "malformed_csv"


def test_a_huge_field_rejects_the_file_with_a_clear_reason():
    with pytest.raises(FileRejected) as info:
        records(b"a,b\n1," + b"x" * (2 * 1024 * 1024) + b"\n")
    assert info.value.reason == "field_too_large"


@pytest.mark.parametrize(
    ("data", "delimiter"),
    [
        (b"sep=;\r\nid;name\r\n1;Ada, Countess\r\n", ";"),
        (b'\xef\xbb\xbfsep=,\nid,name\n1,"Ada, Countess"\n', ","),
        ("sep=|\rid|name\r1|Ada, Countess\r".encode("utf-16"), "|"),
        (b"sep=\t\nid\tname\n1\tAda, Countess\n", "\t"),
    ],
)
def test_a_spreadsheet_delimiter_hint_names_the_delimiter_and_is_no_record(data, delimiter):
    # Read as a header, "sep=;" named one odd column, and the real header was loaded as a row.
    fmt, text = open_text([data])
    assert (fmt.delimiter, fmt.delimiter_hint) == (delimiter, True)
    assert list(read_records(text, fmt)) == [
        (2, ["id", "name"]),
        (3, ["1", "Ada, Countess"]),
    ]


def test_a_hint_naming_a_delimiter_the_loader_does_not_read_rejects_the_file_saying_so():
    with pytest.raises(FileRejected) as info:
        open_text([b"sep=:\nid:name\n1:Ada\n"])
    assert info.value.reason == "no_header" and "':' (sep=:)" in info.value.message


def test_a_header_that_merely_starts_with_sep_is_a_header():
    fmt, text = open_text([b"sep=x;y,other\n1,2\n"])
    assert not fmt.delimiter_hint
    assert next(fields for _line, fields in read_records(text, fmt)) == ["sep=x;y", "other"]


TITLE_BLOCK = 'Data Source,"World Development Indicators"\n\nNote: 5" screens only\n\nid;name\n1;Ada, Countess\n'


@pytest.mark.parametrize(
    "data",
    [
        TITLE_BLOCK.encode(),
        TITLE_BLOCK.replace("\n", "\r\n").encode(),
        TITLE_BLOCK.replace("\n", "\r").encode(),
        TITLE_BLOCK.encode("utf-16"),
    ],
)
def test_lines_before_the_header_are_skipped_as_lines_and_the_delimiter_judged_after_them(data):
    # A World Bank download: a title block, then the table. Its lines are no CSV (an unbalanced quote), and
    # their commas would have made the semicolon file look comma-separated.
    fmt, text = open_text([data], skip_lines=4)
    assert (fmt.delimiter, fmt.skip_lines) == (";", 4)
    assert list(read_records(text, fmt)) == [
        (5, ["id", "name"]),
        (6, ["1", "Ada, Countess"]),
    ]


def test_skipped_lines_come_after_a_delimiter_hint_and_a_huge_one_is_refused():
    fmt, text = open_text([b"sep=;\nA title\nid;name\n1;Ada\n"], skip_lines=1)
    assert list(read_records(text, fmt)) == [
        (3, ["id", "name"]),
        (4, ["1", "Ada"]),
    ]
    fmt, text = open_text([b"t" * (2 * 1024 * 1024) + b"\nid,name\n1,Ada\n"], skip_lines=1)
    with pytest.raises(FileRejected) as info:
        list(read_records(text, fmt))
    assert info.value.reason == "field_too_large" and "before the header" in info.value.message


def test_with_quoting_none_quotes_are_characters_and_with_csv_the_error_says_so():
    # IMDb's datasets are TSV whose quotes are characters: "Weird Al" Yankovic is no quoted field.
    data = b'tconst\tprimaryTitle\ntt1\t"Weird Al" Yankovic\ntt2\tThe "Best" Film\ntt3\t"\n'
    fmt, text = open_text([data], quoting="none")
    assert (fmt.delimiter, fmt.quoting) == ("\t", "none")
    assert list(read_records(text, fmt)) == [
        (1, ["tconst", "primaryTitle"]),
        (2, ["tt1", '"Weird Al" Yankovic']),
        (3, ["tt2", 'The "Best" Film']),
        (4, ["tt3", '"']),
    ]
    fmt, text = open_text([data])
    with pytest.raises(FileRejected) as info:
        list(read_records(text, fmt))
    assert info.value.reason == "malformed_csv" and info.value.message.startswith("line 2: malformed CSV")
    assert 'set quoting = "none" in its contract' in info.value.message


def test_a_stray_quote_in_a_file_that_quotes_as_csv_does_is_called_a_mistake_not_a_character():
    # an Italian fuel-station registry (frictionless' issue-1066.csv): fields quoted as CSV does, and one
    # quote at line 3 never closed. The advice was quoting = "none", which would keep every quote as a character.
    data = b'id;owner;brand\n1;"IP SERVICES S.R.L.";Api-Ip\n2;"MEGA SERVICE S.A.S.;Q8\n3;PATTI;Q8\n'
    fmt, text = open_text([data])
    assert fmt.quotes_seen == "csv"
    with pytest.raises(FileRejected) as info:
        list(read_records(text, fmt))
    assert info.value.reason == "malformed_csv" and "most likely unbalanced: mend that line" in info.value.message
    assert "set quoting" not in info.value.message


def test_a_file_of_quoted_names_between_spaces_is_called_space_separated():
    # R's write.table writes "a" "b" "c" (statsmodels' src/scotvote.csv): the advice was quoting = "none"
    fmt, text = open_text([b'"district" "yes" "tax"\n"Aberdeen" 60.3 712\n"Angus" 53.4 679\n'])
    assert fmt.quotes_seen == "space_separated"
    with pytest.raises(FileRejected) as info:
        list(read_records(text, fmt))
    assert info.value.reason == "malformed_csv" and "the file looks space-separated" in info.value.message
    assert "write.csv" in info.value.message and "set quoting" not in info.value.message


@pytest.mark.parametrize("size", [10, SAMPLE_BYTES - 1, SAMPLE_BYTES, SAMPLE_BYTES + 1, 3 * SAMPLE_BYTES + 5])
@pytest.mark.parametrize("chunk", [1, 7, SAMPLE_BYTES - 1, SAMPLE_BYTES, 1 << 20])
def test_an_uncompressed_object_is_its_sample_then_the_rest_however_it_is_chunked(size, chunk):
    line = b"id,name\n" + b"".join(b"%d,name %d\n" % (i, i) for i in range(size))
    data = line[:size] if size > 10 else b"id,name\n1\n"
    source = inspect(data[i : i + chunk] for i in range(0, len(data), chunk))
    assert source.sample == data[:SAMPLE_BYTES]
    assert source.sample + b"".join(source.rest) == data
