"""Reading and writing a location: a local path (a ``Path``, plain file I/O, exactly as a folder
always behaved) or a URI (a ``str``, through the ``pyarrow.fs`` filesystem of its scheme, the
library Ray Tune and Ray Train use for the same storage).

Locations are joined with ``join`` and shown with ``str``; a ``file://`` URI is a local path.
Errors are ``OSError`` (``FileNotFoundError`` for what is missing), whichever side they come from.
"""
from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from raysweep.storage.schemes import scheme_of

Location = Union[str, "os.PathLike[str]"]

_FILESYSTEMS: dict[tuple[str, str, str], pafs.FileSystem] = {}
_LOCK = threading.Lock()


def is_uri(location: Location) -> bool:
    """A ``scheme://...`` other than ``file://``."""
    text = os.fspath(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme[:1].isalpha() and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum() and scheme.lower() != "file"


def location(value: Location) -> Location:
    """``value`` as this module keeps it: a URI string without a trailing slash, or a ``Path``."""
    if is_uri(value):
        parts = urlsplit(os.fspath(value))
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") or ""))
    text = os.fspath(value)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(text)


def absolute(value: Location) -> Location:
    """A local path made absolute from the current directory; a URI as it is."""
    loc = location(value)
    return loc if isinstance(loc, str) else loc.expanduser().resolve()


def join(base: Location, *parts: str) -> Location:
    loc = location(base)
    if isinstance(loc, Path):
        return loc.joinpath(*parts)
    split = urlsplit(loc)
    return urlunsplit(split._replace(path=posixpath.join(split.path or "/", *parts)))


def name(loc: Location) -> str:
    loc = location(loc)
    return loc.name if isinstance(loc, Path) else posixpath.basename(urlsplit(loc).path)


def parent(loc: Location) -> Location:
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.parent
    split = urlsplit(loc)
    return urlunsplit(split._replace(path=posixpath.dirname(split.path)))


def resolve(loc: Location) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it. Object stores' filesystems are opened once per bucket."""
    loc = location(loc)
    if isinstance(loc, Path):
        return pafs.LocalFileSystem(), str(loc.expanduser().resolve())
    split = urlsplit(loc)
    key = (split.scheme.lower(), split.netloc, split.query)
    with _LOCK:
        fs = _FILESYSTEMS.get(key)
    if fs is not None:
        return fs, (split.netloc + split.path).rstrip("/")
    fs, path = scheme_of(loc).filesystem(loc)
    if fs.type_name in ("s3", "gcs"):  # bucket/key paths: the same filesystem serves every key
        with _LOCK:
            _FILESYSTEMS[key] = fs
    return fs, path


def exists(loc: Location) -> bool:
    return _kind(loc) != pafs.FileType.NotFound


def is_file(loc: Location) -> bool:
    return _kind(loc) == pafs.FileType.File


def is_dir(loc: Location) -> bool:
    return _kind(loc) == pafs.FileType.Directory


def _kind(loc: Location) -> pafs.FileType:
    loc = location(loc)
    if isinstance(loc, Path):
        return pafs.FileType.File if loc.is_file() else pafs.FileType.Directory if loc.is_dir() else pafs.FileType.NotFound
    fs, path = resolve(loc)
    return fs.get_file_info(path).type


def read_bytes(loc: Location) -> bytes:
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.read_bytes()
    fs, path = resolve(loc)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(loc: Location) -> str:
    return read_bytes(loc).decode("utf-8")


def open_input(loc: Location) -> BinaryIO:
    """A binary file object (``torch.load``, ``pd.read_csv``): the file itself, or an object's bytes."""
    loc = location(loc)
    return open(loc, "rb") if isinstance(loc, Path) else io.BytesIO(read_bytes(loc))


def write_bytes(loc: Location, data: bytes) -> None:
    """One object or file; on an object store it appears whole or not at all."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.write_bytes(data)
        return
    fs, path = resolve(loc)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(loc: Location, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def write_atomic(loc: Location, data: bytes) -> None:
    """Readers see the old content or the new, never a part: a temporary file renamed into
    place, or on an object store a temporary key moved (copied server-side) into place."""
    loc = location(loc)
    if isinstance(loc, Path):
        fd, tmp = tempfile.mkstemp(prefix=f".{loc.name}.", dir=loc.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, loc)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = resolve(loc)
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}")
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def makedirs(loc: Location) -> None:
    """A folder and its parents; object stores have none to make (a key's prefix is its folder)."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
        return
    fs, path = resolve(loc)
    if fs.type_name not in ("s3", "gcs"):
        fs.create_dir(path, recursive=True)


@dataclass(frozen=True)
class Entry:
    """One thing in a folder: its name relative to the folder listed (``a/b`` when recursive)."""

    name: str
    is_dir: bool
    size: int = 0


def listdir(loc: Location, recursive: bool = False) -> list[Entry]:
    """What a folder holds (nothing if it does not exist); one request on an object store."""
    loc = location(loc)
    if isinstance(loc, Path):
        if not loc.is_dir():
            return []
        found = loc.rglob("*") if recursive else loc.iterdir()
        return [Entry(p.relative_to(loc).as_posix(), p.is_dir(), p.stat().st_size if p.is_file() else 0) for p in found]
    fs, path = resolve(loc)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    return [Entry(i.path[len(path):].lstrip("/"), i.type == pafs.FileType.Directory, i.size or 0) for i in infos]


def remove(loc: Location) -> None:
    """A file or a whole folder; nothing if it is not there."""
    loc = location(loc)
    if isinstance(loc, Path):
        if loc.is_dir():
            shutil.rmtree(loc, ignore_errors=True)
        else:
            loc.unlink(missing_ok=True)
        return
    fs, path = resolve(loc)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def remove_tree(loc: Location) -> None:
    """A folder and everything in it, without asking first what it is; nothing if it is gone."""
    loc = location(loc)
    if isinstance(loc, Path):
        shutil.rmtree(loc, ignore_errors=True)
        return
    fs, path = resolve(loc)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def remove_files(base: Location, names: list[str]) -> None:
    """Files under ``base`` by their relative names: one request each, no listing first."""
    for rel in names:
        loc = join(base, rel)
        if isinstance(loc, Path):
            loc.unlink(missing_ok=True)
        else:
            fs, path = resolve(loc)
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                pass


def upload_file(local: Union[str, os.PathLike], loc: Location) -> None:
    """A local file copied to ``loc`` atomically."""
    loc = location(loc)
    if isinstance(loc, Path):
        shutil.copyfile(local, loc)
        return
    write_atomic(loc, Path(local).read_bytes())


def upload_tree(local_dir: Union[str, os.PathLike], loc: Location) -> list[Location]:
    """Every file under ``local_dir`` copied under ``loc``; returns where each went."""
    out = []
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            target = join(loc, *path.relative_to(local_dir).parts)
            if isinstance(target, Path):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            else:
                write_bytes(target, path.read_bytes())
            out.append(target)
    return out


def download_tree(loc: Location, local_dir: Union[str, os.PathLike]) -> Path:
    """Every file under ``loc`` copied into ``local_dir``."""
    local = Path(local_dir)
    for entry in listdir(loc, recursive=True):
        if not entry.is_dir:
            target = local.joinpath(*entry.name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read_bytes(join(loc, *entry.name.split("/"))))
    return local


@contextmanager
def staged(loc: Location) -> Iterator[Path]:
    """A local folder to write files into that end up in ``loc``: the folder itself when it is
    local, else a temporary one whose files are uploaded when the block ends without error."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
        yield loc
        return
    with tempfile.TemporaryDirectory(prefix="raysweep-staged-") as tmp:
        yield Path(tmp)
        upload_tree(tmp, loc)


def published(files: dict[str, Path], staging: Path, loc: Location) -> dict[str, Location]:
    """Where files written in ``staged(loc)``'s folder ended up."""
    return {k: join(loc, *Path(p).relative_to(staging).parts) for k, p in files.items()}
