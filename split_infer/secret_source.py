"""Where a secret comes from (docs/security.md): the config's value, else a file (a Docker or
Kubernetes secret), else a well-known environment variable. Never the command line.

Its own module so that config sections outside `split_infer.config` (the MQTT one) use it too.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_secret(value: str | None, file: Path | None, env: str, what: str) -> str | None:
    """`value`, else the contents of `file` (surrounding whitespace stripped), else `$env`; None if none.
    `$env_FILE` names a file to read when neither `value` nor `file` is given."""
    if value is not None and file is not None:
        raise ValueError(f"give {what} or {what}_file, not both")
    if file is not None:
        try:
            text = file.read_text().strip()
        except OSError as e:
            raise ValueError(f"{what}_file {file}: cannot read it ({e.strerror})") from None
        if not text:
            raise ValueError(f"{what}_file {file} is empty")
        return text
    if value is not None:
        return value
    if os.environ.get(f"{env}_FILE"):
        return read_secret(None, Path(os.environ[f"{env}_FILE"]), env, f"${env}")
    return os.environ.get(env) or None
