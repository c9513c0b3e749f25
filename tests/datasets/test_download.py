"""Downloads and extraction, offline: archives built in tmp_path and served through file:// URLs."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tllib_tune.datasets import (
    RESOURCES,
    ChecksumError,
    DownloadError,
    ExtractionError,
    download_url,
    extract_archive,
    get_dataset,
)
from tllib_tune.datasets import download as download_module
from tllib_tune.datasets.download import Resource, download_and_extract

from .trees import make_aircraft, make_cub


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_tgz(src_root: Path, top: str, archive: Path, extra: bool = True) -> Path:
    """Archive src_root/top as an official-style .tgz (plus a loose top-level file, like CUB's)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / top, arcname=top)
        if extra:
            data = b"attribute list\n"
            info = tarfile.TarInfo("attributes.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def cub_archive(tmp_path):
    src = tmp_path / "src"
    expected = make_cub(src / "CUB_200_2011", per_class=2)
    archive = make_tgz(src, "CUB_200_2011", tmp_path / "CUB_200_2011.tgz")
    return archive, expected


def test_download_url_file_scheme_with_checksums(tmp_path, cub_archive):
    archive, _ = cub_archive
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = download_url(
        archive.as_uri(), tmp_path / "dl" / "x.tgz", md5=md5(archive), sha256=sha, progress=False
    )
    assert out.read_bytes() == archive.read_bytes()
    assert leftovers(tmp_path / "dl") == ["x.tgz"]


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_checksum_mismatch_leaves_no_file(tmp_path, cub_archive, kind):
    archive, _ = cub_archive
    with pytest.raises(ChecksumError) as err:
        download_url(archive.as_uri(), tmp_path / "dl" / "x.tgz", progress=False, **{kind: "0" * 8})
    assert kind in str(err.value) and "0" * 8 in str(err.value)
    assert leftovers(tmp_path / "dl") == []


def test_unreachable_url_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError) as err:
        download_url((tmp_path / "nope.tgz").as_uri(), tmp_path / "dl" / "x.tgz", progress=False)
    assert "nope.tgz" in str(err.value) and "by hand" in str(err.value)
    assert leftovers(tmp_path / "dl") == []


def test_short_read_is_detected(tmp_path, monkeypatch):
    class Short(io.BytesIO):
        headers = {"Content-Length": "1000"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Short(b"x" * 10))
    with pytest.raises(DownloadError, match="stopped after 10 of 1000 bytes"):
        download_url("http://example.invalid/x", tmp_path / "x", progress=False)
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch):
    class Interrupted(io.BytesIO):
        headers = {}

        def read(self, n=-1):
            if self.tell() > 0:
                raise KeyboardInterrupt
            return super().read(4)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Interrupted(b"abcdefgh"))
    with pytest.raises(KeyboardInterrupt):
        download_url("http://example.invalid/x", tmp_path / "x", progress=False)
    assert leftovers(tmp_path) == []


def test_extract_is_atomic_on_truncated_archive(tmp_path, cub_archive):
    archive, _ = cub_archive
    broken = tmp_path / "broken.tgz"
    data = archive.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    dest = tmp_path / "dest"
    with pytest.raises(ExtractionError) as err:
        extract_archive(broken, dest, expected="CUB_200_2011", progress=False)
    assert str(broken) in str(err.value) and "download it again" in str(err.value)
    assert leftovers(dest) == []


def test_extract_failure_midway_leaves_nothing(tmp_path, cub_archive, monkeypatch):
    archive, _ = cub_archive
    real = tarfile.TarFile.extract
    count = {"n": 0}

    def failing(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", failing)
    with pytest.raises(ExtractionError, match="No space left"):
        extract_archive(archive, tmp_path / "dest", expected="CUB_200_2011", progress=False)
    assert count["n"] == 5
    assert leftovers(tmp_path / "dest") == []


def test_extract_rejects_wrong_archive_and_unsafe_paths(tmp_path):
    (tmp_path / "src" / "other").mkdir(parents=True)
    (tmp_path / "src" / "other" / "f.txt").write_text("x")
    wrong = make_tgz(tmp_path / "src", "other", tmp_path / "wrong.tgz", extra=False)
    with pytest.raises(ExtractionError, match="does not contain the folder CUB_200_2011/"):
        extract_archive(wrong, tmp_path / "dest", expected="CUB_200_2011", progress=False)
    assert leftovers(tmp_path / "dest") == []

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ExtractionError, match="unsafe path"):
        extract_archive(evil, tmp_path / "dest", progress=False)
    assert not (tmp_path / "escaped.txt").exists() and leftovers(tmp_path / "dest") == []

    not_archive = tmp_path / "plain.tgz"
    not_archive.write_bytes(b"hello")
    with pytest.raises(ExtractionError, match="neither a tar nor a zip"):
        extract_archive(not_archive, tmp_path / "dest", progress=False)


def test_extract_zip_and_refuse_to_overwrite(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/inner/file.txt", "hello")
    out = extract_archive(archive, tmp_path / "dest", expected="top", progress=False)
    assert (out / "inner" / "file.txt").read_text() == "hello"
    with pytest.raises(ExtractionError, match="already exist"):
        extract_archive(archive, tmp_path / "dest", expected="top", progress=False)
    assert leftovers(tmp_path / "dest") == ["top"]


def test_get_dataset_download_cub(tmp_path, cub_archive, monkeypatch):
    archive, _ = cub_archive
    monkeypatch.setitem(
        RESOURCES, "cub200", Resource(archive.as_uri(), "CUB_200_2011.tgz", "CUB_200_2011", md5=md5(archive))
    )
    root = tmp_path / "data" / "cub"
    ds = get_dataset("cub200", root, split="test", download=True)
    assert len(ds) == 3 and ds.num_classes == 3
    assert leftovers(root) == ["CUB_200_2011", "CUB_200_2011.tgz", "attributes.txt"]
    assert ds.samples[0][0].startswith(str(root / "CUB_200_2011" / "images"))

    # Present now: no second download.
    monkeypatch.setattr(download_module, "download_url", lambda *a, **k: pytest.fail("downloaded twice"))
    assert len(get_dataset("cub200", root, split="train", download=True)) == 3


def test_get_dataset_download_checksum_mismatch(tmp_path, cub_archive, monkeypatch):
    archive, _ = cub_archive
    monkeypatch.setitem(
        RESOURCES, "cub200", Resource(archive.as_uri(), "CUB_200_2011.tgz", "CUB_200_2011", md5="f" * 32)
    )
    with pytest.raises(ChecksumError, match="f" * 32):
        get_dataset("cub200", tmp_path / "data", download=True)
    assert leftovers(tmp_path / "data") == []


def test_existing_archive_is_verified_then_reused(tmp_path, cub_archive, monkeypatch):
    archive, _ = cub_archive
    root = tmp_path / "data"
    root.mkdir()
    (root / "CUB_200_2011.tgz").write_bytes(archive.read_bytes())
    monkeypatch.setitem(
        RESOURCES,
        "cub200",
        Resource("http://example.invalid/x", "CUB_200_2011.tgz", "CUB_200_2011", md5=md5(archive)),
    )
    assert len(get_dataset("cub200", root, download=True)) == 3
    (root / "CUB_200_2011").rename(root / "moved")
    (root / "CUB_200_2011.tgz").write_bytes(b"corrupt")
    with pytest.raises(ChecksumError, match="Delete"):
        download_and_extract(RESOURCES["cub200"], root, progress=False)


def test_get_dataset_download_aircraft_without_checksum(tmp_path, monkeypatch):
    src = tmp_path / "src"
    expected = make_aircraft(src / "fgvc-aircraft-2013b" / "data", per_split=1)
    archive = make_tgz(src, "fgvc-aircraft-2013b", tmp_path / "fgvc.tar.gz", extra=False)
    monkeypatch.setitem(
        RESOURCES, "aircraft", Resource(archive.as_uri(), "fgvc-aircraft-2013b.tar.gz", "fgvc-aircraft-2013b")
    )
    ds = get_dataset("aircraft", tmp_path / "data", split="test", download=True)
    assert [y for _, y in ds.samples] == [y for _, y in expected["test"]]
    assert ds[0][0].size[1] == 44 - 20


def test_official_resources_are_declared():
    assert RESOURCES["cub200"].md5 == "97eceeb196236b17998738112f37df78"
    assert RESOURCES["cub200"].url.startswith(
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
    )
    assert RESOURCES["aircraft"].url.endswith("/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz")
