"""`split-infer cloud ingest|worker`: dispatch to the service's own argument parser."""

from __future__ import annotations

import sys

USAGE = """usage: split-infer cloud {ingest,worker} [--config cloud.yaml] [...]

  ingest   gRPC server: validates feature frames and queues them in Redis Streams
  worker   consumer-group worker: runs the detection head, writes detections (run one or many)

Each sub-command takes --help."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)  # no service named: a usage error (exit 2)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "ingest":
        from split_infer.cloud.ingest import main as run
    elif name == "worker":
        from split_infer.cloud.worker import main as run
    else:
        print(f"split-infer cloud: unknown service {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return int(run(rest) or 0)
