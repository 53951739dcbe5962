"""Sources: zips, folders and single files look alike to parsers; unsafe zips are refused up front."""

from __future__ import annotations

import os
import stat
import zipfile

import pytest

from doppel.errors import InvalidArgument, NotFound, ParseError
from services.ingest.source import FileSource, FolderSource, ZipLimits, ZipSource, open_source
from support.parsing import write_zip


def test_zip_folder_and_file_list_the_same_relative_paths(tmp_path):
    files = {"a/b.json": b"{}", "c.txt": b"hi", "a/z/d.csv": b"x,y"}
    zpath = write_zip(tmp_path / "e.zip", files)
    folder = tmp_path / "e"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    with open_source(zpath) as z, open_source(folder) as f:
        assert isinstance(z, ZipSource) and isinstance(f, FolderSource)
        assert z.files() == f.files() == ["a/b.json", "a/z/d.csv", "c.txt"]
        for rel, data in files.items():
            assert z.read(rel) == f.read(rel) == data
            assert z.size(rel) == f.size(rel) == len(data)
        assert z.where("c.txt") == f"{zpath}:c.txt"
        assert f.head("a/b.json", 1) == b"{"
        with pytest.raises(NotFound):
            z.read("missing")


def test_a_single_file_and_a_display_name(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_bytes(b"hello")
    with open_source(path, name="My Chat.txt") as s:
        assert isinstance(s, FileSource)
        assert s.files() == ["chat.txt"]
        assert s.read("chat.txt") == b"hello"
        assert s.where("chat.txt") == "My Chat.txt"


def test_missing_path_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="no such file or folder"):
        open_source(tmp_path / "nope.zip")


def test_a_damaged_zip_is_a_parse_error_not_an_unknown_format(tmp_path):
    good = write_zip(tmp_path / "g.zip", {"x.txt": b"x" * 1000})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(ParseError, match=r"cut\.zip: not a readable zip"):
        open_source(cut)


def _zip_with(path, name: str, data: bytes = b"x", *, mode: int | None = None):
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        z.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil.txt", "'..' path segment"),
        ("a/../../evil.txt", "'..' path segment"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/x.txt", "absolute path"),
        ("a\\..\\b.txt", "backslash"),
    ],
)
def test_unsafe_entry_names_are_refused(tmp_path, name, reason):
    path = _zip_with(tmp_path / "bad.zip", name)
    with pytest.raises(InvalidArgument, match=reason) as err:
        open_source(path)
    assert "bad.zip" in str(err.value) and repr(name) in str(err.value)


def test_symlink_entries_are_refused(tmp_path):
    path = _zip_with(tmp_path / "link.zip", "inbox/link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)
    with pytest.raises(InvalidArgument, match="symbolic link"):
        open_source(path)


def test_zip_bombs_are_refused_by_ratio_size_and_count(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.json", b"\0" * (20 << 20))
    with pytest.raises(InvalidArgument, match="zip bomb"):
        open_source(bomb)
    files = {f"f{i}.txt": b"abc" for i in range(20)}
    many = write_zip(tmp_path / "many.zip", files)
    with pytest.raises(InvalidArgument, match="20 entries is more than the limit of 10"):
        open_source(many, ZipLimits(max_entries=10))
    with pytest.raises(InvalidArgument, match="unpack to more than 50 bytes"):
        open_source(many, ZipLimits(max_total_bytes=50))
    with open_source(many) as ok:
        assert len(ok.files()) == 20


def test_folder_symlinks_are_refused(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    os.symlink("/etc/passwd", folder / "link.txt")
    with pytest.raises(InvalidArgument, match="'link.txt' is a symbolic link"):
        open_source(folder)


def test_a_damaged_member_is_a_parse_error_naming_it(tmp_path):
    path = write_zip(tmp_path / "d.zip", {"inbox/a.json": b"[" + b"1," * 5000 + b"1]"})
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the deflated data of the only member
    path.write_bytes(bytes(data))
    with open_source(path) as s:
        with pytest.raises(ParseError, match=r"d\.zip, entry inbox/a\.json: entry is damaged"):
            s.read("inbox/a.json")
        with pytest.raises(ParseError, match="entry is damaged"), s.open("inbox/a.json") as f:
            while f.read(100):
                pass
