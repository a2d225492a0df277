"""Errors the entry points turn into one message and an exit code, and the gist of any other."""
from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RunInputError(ValueError):
    """Bad input found before any Ray work starts; the CLI prints it and exits 2."""


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The gist of an exception: its first line, plus the first detail line when it has one."""
    text = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return " ".join(text[:2])[:limit] if text else type(exc).__name__


def check_name(name: str, flag: str = "--name") -> str:
    """A name becomes one folder: one path component of letters, digits, '.', '_' and '-'."""
    if not NAME.fullmatch(name or "") or name in (".", ".."):
        raise RunInputError(f"{flag} {name!r}: a name is one folder name (letters, digits, '.', '_', '-'; "
                            "no '/', no '..'), e.g. digits-lw")  # fmt: skip
    return name
