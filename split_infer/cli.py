"""The `split-infer` command: one sub-command per concern, each owned by its module.

Every sub-command lives in the module named below and exposes `main(argv) -> int`, parsing its
own arguments. Importing is lazy so that `split-infer edge` never pulls in torch.
Exit status, for every command (docs/cli.md): 0 done, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import TextIO

from split_infer import __version__

EXIT_USAGE = 2  # as split_infer.service, which this module does not import (it stays light)


@dataclass(frozen=True)
class KnownWarning:
    """A third-party warning that is about the library's own internals, not anything an operator can act on."""

    category: type[Warning]
    message: str  # a regular expression matched at the start of the warning's text
    module: str  # the module the warning is attributed to


KNOWN_WARNINGS = (
    # OpenVINO's PyTorch frontend traces the model with torch.jit (export, and the worker's OpenVINO
    # head): torch deprecates the call OpenVINO makes, not anything of ours.
    KnownWarning(FutureWarning, r"`torch\.jit\.trace(_method)?` is deprecated", r"torch\.jit\._trace"),
)

COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("split_infer.apps.detect", "run detection on an image, video or URL (edge + head in one process)"),
    "weights": ("split_infer.model.weights", "fetch and convert model weights (weights pull yolov5s)"),
    "cuts": ("split_infer.model.partition", "table of the tensors that cross each cut"),
    "export": ("split_infer.model.export", "export the edge part to OpenVINO IR"),
    "codec": ("split_infer.codec.cli", "train and inspect feature codecs"),
    "edge": ("split_infer.edge.node", "run an edge node (cameras -> features -> gRPC)"),
    "cloud": ("split_infer.cloud.cli", "run cloud services: ingest, worker"),
    "analytics": ("split_infer.analytics.service", "tracking, line and zone counts"),
    "api": ("split_infer.api.app", "HTTP read API and dashboard"),
    "demo": ("split_infer.apps.demo", "the whole pipeline on one machine"),
    "certs": ("split_infer.certs", "development CA and TLS certificates (certs dev --out DIR)"),
    "config": ("split_infer.config_cli", "check config files (config check FILE...), print their JSON Schema"),
}


# The package extra each command needs beyond the base (docs/cli.md#packaging), named when a
# dependency is missing.
EXTRA_OF_COMMAND = {"detect": "worker", "weights": "export", "cuts": "export", "export": "export", "codec": "train",
                    "cloud": "ingest,worker", "analytics": "analytics", "api": "api", "demo": "cloud"}


def usage() -> str:
    lines = ["usage: split-infer [-h | -V] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Each command takes --help.",
              "exit status: 0 done, 1 runtime failure, 2 usage or configuration error"]
    return "\n".join(lines)


def quiet_warnings() -> None:
    """Drop the known third-party warnings, and turn any other warning into one log line (the
    `py.warnings` logger) instead of Python's two-line `file:line: Warning` + source excerpt, so
    that plain and JSON logs stay one record per line."""
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
    warnings.showwarning = _log_warning
    # OpenCV's native log writes "[ WARN:0@1.2] global ..." lines of its own; what matters reaches
    # us as a failed read, which the code reports. Operators may still ask for it (OPENCV_LOG_LEVEL).
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: a usage error, as argparse treats a missing required argument
        print(f"split-infer: a command is required\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"split-infer {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"split-infer: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    quiet_warnings()
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "split_infer":
            raise
        extra = EXTRA_OF_COMMAND.get(name)
        hint = f": pip install -c constraints.txt 'split-infer[{extra}]'" if extra else ""
        print(f"split-infer {name}: {e.name} is not installed; this host lacks the extra the command "
              f"needs{hint} (docs/cli.md#packaging)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
