"""The `split-infer` command: one sub-command per concern, each owned by its module.

Every sub-command lives in the module named below and exposes `main(argv) -> int`, parsing its
own arguments. Importing is lazy so that `split-infer edge` never pulls in torch.
"""

from __future__ import annotations

import importlib
import sys

from split_infer import __version__

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


def usage() -> str:
    lines = ["usage: split-infer [-h | -V] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"split-infer {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"split-infer: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
