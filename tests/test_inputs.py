"""Input parsing: streaming readers, entry validation, and safe names."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from messages import Rejected, WorkItem
from runtime.core.errors import InputError
from runtime.core.inputs import (
    MAX_FIELDS_BYTES,
    UnsafeNameError,
    derive_name,
    fields_of,
    iter_batches,
    iter_raw_entries,
    parse_entry,
    safe_name,
)

HOSTILE = [
    "../../x",
    "/abs/x",
    "a/../../b",
    "..",
    "",
    "a\x00b",
    "a\nb",
    "x" * 300,
    "C:\\windows\\x",
    "..\\..\\x",
    "ok/" + "y" * 256,
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_rejected(name: str) -> None:
    """Names that could escape the output directory or are no file name are refused."""
    with pytest.raises(UnsafeNameError):
        safe_name(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.bin", "a.bin"),
        ("dir/a.bin", "dir/a.bin"),
        ("./a//b/./c", "a/b/c"),
        ("dir\\a.bin", "dir/a.bin"),
        ("ünï cödé.txt", "ünï cödé.txt"),
    ],
)
def test_ordinary_names_are_normalised(name: str, expected: str) -> None:
    """Subdirectories are allowed; redundant parts are dropped."""
    assert safe_name(name) == expected


def test_entry_defaults_id_and_name_from_the_url() -> None:
    """Without id and name, both come from the url."""
    item, derived = parse_entry({"url": "https://h.example/path/file%20one.bin?x=1"}, 3)
    assert isinstance(item, WorkItem)
    assert derived
    assert item.name == "file one.bin"
    assert len(item.id) == 24
    assert item.line == 3
    again, _ = parse_entry({"url": "https://h.example/path/file%20one.bin?x=1"}, 9)
    assert isinstance(again, WorkItem)
    assert again.id == item.id


def test_url_without_a_file_name_gets_the_id_as_name() -> None:
    """A url ending in '/' still gives a usable name."""
    assert derive_name("http://h/dir/", "abc") == "abc"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ([1, 2], "entry is a JSON array, not an object"),
        ({"id": "a"}, "'url' must be a non-empty string"),
        ({"url": "ftp://h/x"}, "url scheme 'ftp' is not http or https"),
        ({"url": "file:///etc/passwd"}, "url scheme 'file'"),
        ({"url": "http:///nohost"}, "url has no host"),
        ({"url": "http://h/x", "name": "../../etc/passwd"}, "unsafe name"),
        ({"url": "http://h/x", "sha256": "abc"}, "'sha256' must be 64 hex digits"),
        ({"url": "http://h/x", "size": -1}, "'size' must be a non-negative integer"),
        ({"url": "http://h/x", "id": True}, "'id' must be a string or an integer"),
    ],
)
def test_bad_entries_are_rejected_naming_their_line(entry: object, fragment: str) -> None:
    """A bad entry becomes a Rejected with the line and the reason."""
    result, _ = parse_entry(entry, 42)
    assert isinstance(result, Rejected)
    assert result.id == "line:42"
    assert result.error.startswith("line 42: ")
    assert fragment in result.error


def test_json_array_is_streamed_with_line_numbers(tmp_path: Path) -> None:
    """Each element of a JSON array carries the line it starts on."""
    path = tmp_path / "in.json"
    path.write_text('[\n  {"url": "http://h/a"},\n  {"url": "http://h/b"},\n\n  7\n]\n')
    entries = list(iter_raw_entries(path))
    assert [(line, obj) for line, obj, _ in entries] == [
        (2, {"url": "http://h/a"}),
        (3, {"url": "http://h/b"}),
        (5, 7),
    ]


def test_broken_json_array_raises_input_error_with_line(tmp_path: Path) -> None:
    """A JSON array whose syntax breaks cannot be resynchronised: InputError names the line."""
    path = tmp_path / "in.json"
    path.write_text('[\n {"url": "http://h/a"},\n {"url": \n')
    with pytest.raises(InputError, match=r"in\.json: line 3: malformed JSON array"):
        list(iter_raw_entries(path))


def test_ndjson_bad_lines_are_reported_and_the_rest_proceeds(tmp_path: Path) -> None:
    """An unparsable NDJSON line is rejected alone."""
    path = tmp_path / "in.ndjson"
    path.write_bytes(b'{"url": "http://h/a"}\n{broken\n\n\xff\xfe\n{"url": "http://h/b"}\n')
    batches = list(iter_batches(path))
    items = [i for b in batches for i in b.items]
    rejected = [r for b in batches for r in b.rejected]
    assert [i.line for i in items] == [1, 5]
    assert [(r.line, r.error.split(":")[0]) for r in rejected] == [(2, "line 2"), (4, "line 4")]
    assert "not valid JSON" in rejected[0].error
    assert "not valid UTF-8" in rejected[1].error


def test_missing_input_file_is_an_input_error(tmp_path: Path) -> None:
    """The file name is in the message."""
    with pytest.raises(InputError, match=r"nope\.json: cannot open input"):
        list(iter_raw_entries(tmp_path / "nope.json"))


@pytest.mark.parametrize("fmt", ["ndjson", "json"])
def test_large_inputs_are_streamed_not_loaded(tmp_path: Path, fmt: str) -> None:
    """Reading 200,000 entries keeps peak Python memory far below the file's size."""
    path = tmp_path / f"big.{fmt}"
    line = json.dumps({"url": "http://h.example/some/long/path/file-000000.bin", "id": "x" * 40})
    with path.open("w") as fh:
        if fmt == "json":
            fh.write("[\n" + ",\n".join(line for _ in range(200_000)) + "\n]\n")
        else:
            fh.writelines(line + "\n" for _ in range(200_000))
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in iter_raw_entries(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 200_000
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte file"


@pytest.mark.parametrize("length", [251, 252, 255])
def test_a_file_name_without_room_for_part_is_rejected(length: int) -> None:
    """A last component of 251-255 bytes fits the file system but not with ``.part``:
    rejected at ingest instead of failing ``filesystem`` three times."""
    with pytest.raises(UnsafeNameError, match=r"room for '\.part'"):
        safe_name("a" * length)
    entry, _ = parse_entry({"url": "http://h/x", "name": "d/" + "é" * (length // 2 + 1)}, 4)
    assert isinstance(entry, Rejected)
    assert "line 4" in entry.error


def test_long_names_that_can_be_written_pass() -> None:
    """250 bytes for the file name and 255 for a directory are fine."""
    assert safe_name("a" * 250) == "a" * 250
    assert safe_name("d" * 255 + "/f.bin") == "d" * 255 + "/f.bin"


def test_a_long_derived_name_is_shortened_not_rejected() -> None:
    """A url whose last segment is too long gets a shortened name keeping its extension;
    two such urls stay distinct."""
    one = derive_name("http://h/" + "x" * 300 + "1.tar.gz", "id1")
    two = derive_name("http://h/" + "x" * 300 + "2.tar.gz", "id2")
    for name in (one, two):
        assert len(name.encode()) <= 250
        assert name.endswith(".gz")
        assert safe_name(name) == name
    assert one != two


def test_a_string_with_a_lone_surrogate_is_a_bad_entry_that_can_be_stored() -> None:
    """JSON can carry ``\\udcff``, which no UTF-8 store takes: such an id, url or name
    rejects the entry (naming the field), and the rejection itself holds only text that
    can be stored."""
    from runtime.core.inputs import parse_entry

    for entry, key in (
        ({"url": "http://a/b", "id": "\udcff"}, "'id'"),
        ({"url": "http://a/\udcff"}, "'url'"),
        ({"url": "http://a/b", "name": "x\udcffy"}, "'name'"),
    ):
        rejected, _ = parse_entry(entry, 7)
        assert isinstance(rejected, Rejected)
        assert rejected.error.startswith(f"line 7: {key} is not valid Unicode")
        for text in (rejected.url, rejected.name, rejected.error):
            text.encode("utf-8")  # raises on a surrogate


def test_an_entrys_other_keys_are_kept_within_a_limit() -> None:
    """Keys beyond the ones conveyor reads travel with the item (``fields_of``); more
    than ``MAX_FIELDS_BYTES`` of them, or a value that cannot be stored, rejects the entry
    naming its line."""
    item, _ = parse_entry({"url": "http://h/a", "speaker": "ada", "n": [1, {"x": None}]}, 3)
    assert isinstance(item, WorkItem)
    assert fields_of(item) == {"speaker": "ada", "n": [1, {"x": None}]}
    plain, _ = parse_entry({"url": "http://h/b", "id": "b", "size": 3}, 4)
    assert isinstance(plain, WorkItem)
    assert (plain.fields, fields_of(plain)) == (b"", {})
    big, _ = parse_entry({"url": "http://h/c", "notes": "x" * MAX_FIELDS_BYTES}, 5)
    assert isinstance(big, Rejected)
    assert big.error.startswith("line 5: ")
    assert "more than the 65,536 an entry may carry" in big.error
    huge, _ = parse_entry({"url": "http://h/d", "n": 2**70}, 6)
    assert isinstance(huge, Rejected)
    assert huge.error.startswith("line 6: its other keys cannot be stored")
