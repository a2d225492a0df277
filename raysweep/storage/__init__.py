"""Where a sweep's files live: a local folder, or an object store behind a URI (``s3://``,
``gs://``, any URI ``pyarrow.fs`` understands). Everything raysweep writes or reads back -- the
experiment, trial checkpoints, the dense cache, reports, ``sweep.json``, trial logs -- goes
through these functions, so a folder and a bucket behave alike.
"""
from raysweep.storage.files import (
    Entry,
    Location,
    absolute,
    download_tree,
    exists,
    is_dir,
    is_file,
    is_uri,
    join,
    listdir,
    location,
    makedirs,
    name,
    open_input,
    parent,
    published,
    read_bytes,
    read_text,
    remove,
    remove_files,
    remove_tree,
    resolve,
    staged,
    upload_file,
    upload_tree,
    write_atomic,
    write_bytes,
    write_text,
)
from raysweep.storage.schemes import SCHEMES, Scheme, probe, register_scheme, scheme_of

STORAGE_TIMEOUT_ENV = "RAYSWEEP_STORAGE_TIMEOUT_S"  # how long the checks before Ray wait for an answer
STORAGE_TIMEOUT_S = 30.0


def storage_timeout() -> float:
    import os

    return float(os.environ.get(STORAGE_TIMEOUT_ENV, STORAGE_TIMEOUT_S))


__all__ = [
    "Entry", "Location", "SCHEMES", "STORAGE_TIMEOUT_ENV", "Scheme", "absolute", "download_tree", "exists",
    "is_dir", "is_file", "is_uri", "join", "listdir", "location", "makedirs", "name", "open_input", "parent",
    "probe", "published", "read_bytes", "read_text", "register_scheme", "remove", "remove_files", "remove_tree", "resolve",
    "scheme_of", "staged", "storage_timeout", "upload_file", "upload_tree", "write_atomic", "write_bytes", "write_text",
]  # fmt: skip
