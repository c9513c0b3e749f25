"""Exceptions for data-set problems a user can cause, each also a familiar built-in type.

Every reader raises a subclass of :class:`DatasetError` whose message names the file (and line) at fault
and says how to fix it, so scripts can catch one type and print the message instead of a traceback.
The extra built-in bases keep ``except FileNotFoundError`` / ``except ValueError`` working.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "MissingSplitError",
    "MissingFileError",
    "MetadataError",
    "CorruptImageError",
    "DownloadError",
    "ChecksumError",
    "ExtractionError",
]

DATA_README = "data/README.md in the tllib-tune repository"


class DatasetError(Exception):
    """Base class: something is wrong with a data set on disk or with fetching it."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No known layout of the data set was found under the given root; ``suggested_dataset`` names the
    data set the root looks like instead (e.g. "imagefolder"), or is None."""

    def __init__(self, *args: object, suggested_dataset: Optional[str] = None) -> None:
        super().__init__(*args)
        self.suggested_dataset = suggested_dataset


class MissingSplitError(DatasetError, FileNotFoundError):
    """The data set has no such split on disk (a class-folder tree without val/ or test/)."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A metadata file or an image that the layout needs is absent (often a half-extracted archive)."""


class MetadataError(DatasetError, ValueError):
    """A metadata file or list file is malformed (bad line, unknown class, inconsistent ids...)."""


class CorruptImageError(DatasetError, OSError):
    """An image file exists but cannot be decoded (corrupt, truncated or not an image)."""


class DownloadError(DatasetError, OSError):
    """A download failed or is unavailable; nothing half-written is left behind."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum."""


class ExtractionError(DatasetError, OSError):
    """An archive could not be extracted; the partial tree is removed."""
