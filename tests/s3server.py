"""A real S3 API on loopback for the tests: moto's server mode in a process of its own, bound to
127.0.0.1 on a free port, with authentication on (a wrong key is refused, as AWS would).

``MotoS3.start()`` creates an IAM user allowed everything, its access key and the bucket
``raysweep``; ``env`` is what a process needs to use it (the standard AWS variables). moto's
recorder counts what a sweep sends (``recording``), for the figures in docs/cluster.md.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

BUCKET = "raysweep"
# moto checks signatures after this many requests: the three that create the user and its key.
UNSIGNED_SETUP_REQUESTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint = ""
        self.env: dict[str, str] = {}

    def start(self, timeout: float = 60) -> "MotoS3":
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(UNSIGNED_SETUP_REQUESTS),
               "MOTO_RECORDER_FILEPATH": str(self.root / "recording.jsonl")}  # fmt: skip
        log = open(self.root / "moto.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=5).read()
                break
            except OSError:
                assert self.proc.poll() is None, (self.root / "moto.log").read_text()[-3000:]
                assert time.time() < deadline, "moto's server did not start"
                time.sleep(0.2)
        self.env = self._credentials()
        self.client("s3").create_bucket(Bucket=BUCKET)
        return self

    def _credentials(self) -> dict[str, str]:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="raysweep")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="raysweep", PolicyName="all", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName="raysweep")["AccessKey"]
        return {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            # No instance metadata service to ask on a laptop or a CI machine: do not wait for one.
            "AWS_EC2_METADATA_DISABLED": "true",
        }  # fmt: skip

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{BUCKET}", *parts])

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (no leading bucket)."""
        out, token = [], None
        s3 = self.client()
        while True:
            kwargs = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = s3.list_objects_v2(**kwargs)
            out += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def _api(self, path: str, method: str = "POST") -> bytes:
        req = urllib.request.Request(self.endpoint + "/moto-api/recorder/" + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def start_recording(self) -> None:
        self._api("reset-recording")
        self._api("start-recording")

    def stop_recording(self) -> list[dict]:
        self._api("stop-recording")
        text = self._api("download-recording", "GET").decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


WRITES = {"PUT", "POST", "DELETE"}


def summarise(requests: list[dict], prefix: str) -> dict:
    """Requests, and bytes uploaded, for the experiment ``s3://raysweep/<prefix>``: in all, the
    writes, and the writes per part -- ``trials/`` (raysweep's checkpoints, logs, failure
    markers), Tune's trial folders (``<trial_id>/``: params, results, event files) and the
    experiment itself (Tune's state, sweep.json, the reports)."""
    totals: Counter = Counter()
    parts: dict[str, Counter] = {}
    for r in requests:
        split = urlsplit(r["url"])
        path, query = unquote(split.path).lstrip("/"), unquote(split.query)
        if not (path.startswith(f"{BUCKET}/{prefix}") or f"prefix={prefix}" in query):
            continue
        totals["requests"] += 1
        if r["method"] not in WRITES:
            continue
        headers = {k.lower(): v for k, v in r["headers"].items()}
        size = int(headers.get("x-amz-decoded-content-length") or headers.get("content-length") or 0)
        key = path[len(BUCKET) + 1 + len(prefix):].lstrip("/")
        top = key.split("/", 1)[0]
        part = "trials" if top == "trials" else "tune trial folders" if "/" in key else "experiment"
        totals["write_requests"] += 1
        totals["bytes_written"] += size
        parts.setdefault(part, Counter()).update({"write_requests": 1, "bytes_written": size})
    return {**totals, "parts": {k: dict(v) for k, v in parts.items()}}
