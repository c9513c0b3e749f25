"""Fetching data sets: checked downloads and atomic extraction.

- :func:`download_url` streams a URL (http(s) or file://) to a temporary file beside the target with a
  progress bar, checks its length and MD5/SHA-256, then renames it into place: an interrupted or bad
  download never leaves a file under the final name.
- :func:`extract_archive` unpacks a tar or zip archive into a temporary folder beside the destination,
  rejects unsafe members, and only then renames the top-level entries into place (the data set's own
  folder last), so a reader never sees a half-extracted tree.
- :data:`RESOURCES` lists the official archives; tests point it at local files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..common import atomic_write
from ..progress import progress_bar as tqdm
from .errors import ChecksumError, DownloadError, ExtractionError

__all__ = [
    "Resource",
    "RESOURCES",
    "download_url",
    "verify_checksum",
    "file_digest",
    "extract_archive",
    "download_and_extract",
]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Resource:
    """An archive to fetch: where from, its file name, the folder it unpacks to and its checksums."""

    url: str
    filename: str
    extracted: str
    md5: Optional[str] = None
    sha256: Optional[str] = None
    size: str = ""


RESOURCES: Dict[str, Resource] = {
    "cub200": Resource(
        url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
        filename="CUB_200_2011.tgz",
        extracted="CUB_200_2011",
        md5="97eceeb196236b17998738112f37df78",
        size="1.1 GB",
    ),
    # The same URL torchvision.datasets.FGVCAircraft uses. No checksum is published for it; the download
    # is still checked against the server's Content-Length and the extracted tree against its layout.
    "aircraft": Resource(
        url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
        filename="fgvc-aircraft-2013b.tar.gz",
        extracted="fgvc-aircraft-2013b",
        size="2.7 GB",
    ),
}

_CHUNK = 1 << 20


def file_digest(path: PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digests(
    path: Path, actual: Dict[str, str], expected: Dict[str, Optional[str]], source: str, fix: str
) -> None:
    for algorithm, want in expected.items():
        if want and actual[algorithm].lower() != want.lower():
            raise ChecksumError(
                f"{source} has {algorithm} {actual[algorithm]}, expected {want}: the file is corrupt, "
                f"truncated or not the published one. {fix}"
            )


def verify_checksum(path: PathLike, md5: Optional[str] = None, sha256: Optional[str] = None) -> None:
    """Raise :class:`ChecksumError` if ``path`` does not match the given digests (None = unchecked)."""
    expected = {"md5": md5, "sha256": sha256}
    actual = {name: file_digest(path, name) for name, want in expected.items() if want}
    _check_digests(Path(path), actual, expected, str(path), f"Delete {path} and download it again.")


def _fetch(url: str, out: Any, timeout: float, progress: bool, name: str) -> Tuple[int, Optional[int], dict]:
    """Stream ``url`` into the open file ``out``; return (bytes received, announced length, digests)."""
    request = urllib.request.Request(url, headers={"User-Agent": "tllib-tune"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
        hashers = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
        received = 0
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=not progress,
            leave=False,
        )
        with bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return received, total, {key: h.hexdigest() for key, h in hashers.items()}


def download_url(
    url: str,
    path: PathLike,
    md5: Optional[str] = None,
    sha256: Optional[str] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``path`` atomically, checking length and checksums; returns ``path``.

    The bytes go to a hidden temporary file in the same folder, which is renamed to ``path`` only after
    every check passed; on any failure (network, checksum, Ctrl-C) it is removed.
    """
    path = Path(path)
    try:
        with atomic_write(path, suffix=".part") as out:
            received, total, actual = _fetch(url, out, timeout, progress, path.name)
            if total is not None and received != total:
                raise DownloadError(
                    f"download of {url} stopped after {received} of {total} bytes; run again to retry"
                )
            _check_digests(
                path,
                actual,
                {"md5": md5, "sha256": sha256},
                f"the download of {url}",
                f"Nothing was saved; run again to retry, or fetch the file by hand and save it as {path}.",
            )
    except (DownloadError, ChecksumError):
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(
            f"downloading {url} failed: {err}. Check your connection or proxy, or fetch the file by hand "
            f"and save it as {path}."
        ) from err
    return path


def _check_member(name: str, dest: Path, archive: Path) -> None:
    target = (dest / name).resolve()
    if os.path.isabs(name) or ".." in Path(name).parts or not str(target).startswith(str(dest.resolve())):
        raise ExtractionError(f"{archive} holds an unsafe path {name!r}; refusing to extract it")


def _extract_tar(archive: Path, dest: Path, progress: bool) -> None:
    with (
        tarfile.open(archive, "r:*") as tar,
        tqdm(desc=f"extracting {archive.name}", unit=" files", disable=not progress, leave=False) as bar,
    ):
        for member in tar:  # streams: no second pass over a compressed archive
            _check_member(member.name, dest, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, dest, filter="data")
            elif member.isfile() or member.isdir():  # older Pythons: plain files and folders only
                tar.extract(member, dest)
            bar.update(1)


def _extract_zip(archive: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in tqdm(zf.infolist(), desc=f"extracting {archive.name}", disable=not progress, leave=False):
            _check_member(info.filename, dest, archive)
            zf.extract(info, dest)


def extract_archive(
    archive: PathLike, dest_dir: PathLike, expected: Optional[str] = None, progress: bool = True
) -> Path:
    """Unpack ``archive`` (tar, tar.gz/bz2/xz or zip) into ``dest_dir`` atomically.

    Everything is unpacked into a temporary folder inside ``dest_dir`` first; only when that succeeded
    (and the archive holds ``expected``, its top-level folder) are the entries renamed into place.
    Returns ``dest_dir / expected`` (or ``dest_dir``). On failure nothing new is left in ``dest_dir``.
    """
    archive, dest = Path(archive), Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            if tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp, progress)
            elif zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp, progress)
            else:
                raise ExtractionError(
                    f"{archive} is neither a tar nor a zip archive; delete it and download again"
                )
        except ExtractionError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise ExtractionError(
                f"extracting {archive} failed: {err}. The archive is corrupt or truncated (or the disk is "
                f"full); delete {archive} and download it again. Nothing was left in {dest}."
            ) from err
        entries = sorted(os.listdir(tmp))
        if expected is not None and expected not in entries:
            raise ExtractionError(
                f"{archive} does not contain the folder {expected}/ (top level: {entries[:5]}); it is not "
                "the expected archive. Delete it and download again."
            )
        clashes = [name for name in entries if (dest / name).exists() or (dest / name).is_symlink()]
        if clashes:
            raise ExtractionError(
                f"cannot extract {archive}: {', '.join(str(dest / n) for n in clashes)} already exist(s); "
                "move or delete them first"
            )
        ordered = [n for n in entries if n != expected] + ([expected] if expected is not None else [])
        for name in ordered:
            os.rename(tmp / name, dest / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / expected if expected is not None else dest


def download_and_extract(
    resource: Resource, root: PathLike, progress: bool = True, keep_archive: bool = True
) -> Path:
    """Fetch ``resource`` into ``root`` (reusing a verified archive already there) and unpack it.

    Returns the extracted folder. The archive is kept beside it unless ``keep_archive`` is False.
    """
    root = Path(root)
    target = root / resource.extracted
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / resource.filename
    if archive.is_file():
        if progress:
            print(f"Using the archive already at {archive}", file=sys.stderr)
        verify_checksum(archive, md5=resource.md5, sha256=resource.sha256)
    else:
        if progress:
            size = f" ({resource.size})" if resource.size else ""
            print(f"Downloading {resource.url}{size} to {archive}", file=sys.stderr)
        download_url(resource.url, archive, md5=resource.md5, sha256=resource.sha256, progress=progress)
    extracted = extract_archive(archive, root, expected=resource.extracted, progress=progress)
    if not keep_archive:
        archive.unlink()
    return extracted
