"""The URI schemes a sweep's storage may use, each with the filesystem it opens and the checks
that run before Ray starts (bucket, credentials, an endpoint that answers).

``SCHEMES`` maps a scheme to its ``Scheme``; a scheme that is not registered but that
``pyarrow.fs.FileSystem.from_uri`` understands (``hdfs://``, ``abfs://``...) gets the generic
one. Registered schemes add what is known about them: S3 opens its objects with one request
(``allow_delayed_open``) and names the AWS settings in its messages.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import pyarrow.fs as pafs

SCHEMES: dict[str, type["Scheme"]] = {}


def register_scheme(*names: str) -> Callable[[type["Scheme"]], type["Scheme"]]:
    def deco(cls: type[Scheme]) -> type[Scheme]:
        for name in names:
            SCHEMES[name] = cls
        return cls

    return deco


class Scheme:
    """Any URI pyarrow.fs understands: its filesystem, and what a failure to reach it means."""

    # What configures access, named in the messages of a failed check.
    settings = "the credentials and endpoint settings of this filesystem"

    @staticmethod
    def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(uri)

    @staticmethod
    def bounded(fs: pafs.FileSystem, timeout_s: float) -> pafs.FileSystem:
        """The same filesystem, giving up within about ``timeout_s`` (checks before Ray)."""
        return fs

    @staticmethod
    def precheck(uri: str) -> None:
        """What can be told wrong without asking the storage (a ValueError)."""

    @staticmethod
    def root(path: str) -> str:
        """What must exist before anything is written: the bucket for object stores."""
        return path.split("/", 1)[0] if path and not path.startswith("/") else "/"

    def explain(self, uri: str, error: BaseException) -> str:
        """One sentence on why ``uri`` cannot be used, from the error a probe raised."""
        return f"cannot use {uri}: {_gist(error)} (check {self.settings})"

    def missing_root(self, uri: str, root: str) -> str:
        return f"{uri}: {root} does not exist; create it first"


@register_scheme("s3")
class S3(Scheme):
    """Amazon S3 and S3-compatible servers (MinIO, Ceph, moto), configured by the standard
    AWS settings: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or a profile, or the node's
    role), ``AWS_REGION``, and ``AWS_ENDPOINT_URL`` for a server other than AWS."""

    settings = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the node's role) and AWS_ENDPOINT_URL"

    @staticmethod
    def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
        fs, path = pafs.FileSystem.from_uri(uri)
        # A small object in one PUT instead of a three-request multipart upload.
        return S3._with(fs, allow_delayed_open=True), path

    @staticmethod
    def _with(fs: pafs.FileSystem, **options) -> pafs.FileSystem:
        rebuild, (kwargs,) = fs.__reduce__()
        return rebuild({**kwargs, **options})

    @staticmethod
    def bounded(fs: pafs.FileSystem, timeout_s: float) -> pafs.FileSystem:
        # An endpoint that accepts connections but never answers costs ~3 s per attempt, and the
        # SDK's default retries would take minutes; the process could not exit before them.
        attempts = max(1, min(3, int(timeout_s // 4)))
        return S3._with(fs, connect_timeout=min(5.0, timeout_s), request_timeout=min(5.0, timeout_s),
                        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))  # fmt: skip

    @staticmethod
    def precheck(uri: str) -> None:
        # Unsigned requests would only be retried until the deadline; a public bucket is read
        # with ?anonymous=true in the URI.
        if aws_credentials_source() is None and "anonymous=true" not in uri.lower():
            raise ValueError(f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                             "AWS_PROFILE, or run where the node's role grants access (its metadata service on)")  # fmt: skip

    def explain(self, uri: str, error: BaseException) -> str:
        text = str(error)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            return f"cannot reach {endpoint} for {uri}: {_gist(error)} (check AWS_ENDPOINT_URL and the network)"
        denied = any(k in text for k in ("ACCESS_DENIED", "INVALID_ACCESS_KEY", "SIGNATURE", "HTTP status 403", "AccessDenied"))
        source = aws_credentials_source()
        if source is None:
            return (f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                    f"or run where the node's role grants access ({_gist(error)})")  # fmt: skip
        if denied:
            return f"{endpoint} refused the credentials from {source} for {uri}: wrong keys, or no access to the bucket ({_gist(error)})"
        return f"cannot use {uri}: {_gist(error)} (credentials from {source}; endpoint {endpoint})"

    def missing_root(self, uri: str, root: str) -> str:
        return f"{uri}: no bucket {root!r} (create it first, e.g. aws s3 mb s3://{root})"


@register_scheme("gs", "gcs")
class GCS(Scheme):
    """Google Cloud Storage: ``GOOGLE_APPLICATION_CREDENTIALS`` or the node's service account."""

    settings = "GOOGLE_APPLICATION_CREDENTIALS (or the node's service account)"

    def missing_root(self, uri: str, root: str) -> str:
        return f"{uri}: no bucket {root!r} (create it first, e.g. gcloud storage buckets create gs://{root})"


def scheme_of(uri: str) -> Scheme:
    """The scheme's ``Scheme``; a ValueError names an unknown one."""
    name = uri.split("://", 1)[0].lower()
    if name in SCHEMES:
        return SCHEMES[name]()
    try:
        pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 -- other failures are the probe's to explain
        if "Unrecognized filesystem type" in str(exc):
            known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
            raise ValueError(f"unknown storage scheme {name!r} in {uri}: use a folder, or {known} or another "
                             "URI pyarrow.fs understands (hdfs://, abfs://)") from None  # fmt: skip
    return Scheme()


def aws_credentials_source() -> Optional[str]:
    """Where the AWS SDK will find credentials, as far as the environment shows; None if nowhere
    (the instance role is not visible from here: it counts only if the metadata service is on)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return "AWS_ACCESS_KEY_ID"
    if os.environ.get("AWS_PROFILE"):
        return f"profile {os.environ['AWS_PROFILE']}"
    for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        if os.environ.get(name):
            return name
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    if os.path.isfile(shared):
        return shared
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        return "the instance role (EC2 metadata)"
    return None


def _gist(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] if text else type(error).__name__


def probe(uri: str, timeout_s: float) -> None:
    """Before anything runs: ``uri``'s scheme is known, its bucket (or root) exists and the
    credentials are accepted for reading there, within about ``timeout_s``. Nothing is written.
    A ValueError says what is wrong in one sentence."""
    import threading

    scheme = scheme_of(uri)
    scheme.precheck(uri)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            fs, path = scheme.filesystem(uri)
            fs = scheme.bounded(fs, timeout_s)
            root = scheme.root(path)
            if fs.get_file_info(root).type == pafs.FileType.NotFound:
                outcome["missing"] = root
            else:
                fs.get_file_info(path)
        except BaseException as exc:  # noqa: BLE001 -- reported below, in the caller's thread
            outcome["error"] = exc

    # A daemon thread: an endpoint that never answers cannot hold the process past the deadline.
    worker = threading.Thread(target=run, name="raysweep-storage-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ValueError(f"no answer from the storage for {uri} within {timeout_s:g} s (check {scheme.settings}; "
                         "RAYSWEEP_STORAGE_TIMEOUT_S sets how long to wait)")  # fmt: skip
    if "missing" in outcome:
        raise ValueError(scheme.missing_root(uri, str(outcome["missing"])))
    if "error" in outcome:
        raise ValueError(scheme.explain(uri, outcome["error"]))  # type: ignore[arg-type]
