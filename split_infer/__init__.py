"""split-infer: split-inference video analytics.

The edge runs the first layers of a YOLO detector (the feature extractor) on OpenVINO and
streams compressed feature tensors; the cloud runs the rest of the network (the head).
Importing this package imports nothing heavy: the edge must stay free of torch.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# numpy's OpenBLAS starts a thread per core that busy-waits between calls. Our matrix products (a
# codec's basis: 64x128 by a few thousand pixels) are too small to gain from them, and on a node
# whose cores also run OpenVINO, FFmpeg and gRPC the spinning cost the edge a third of its frames
# and tripled the ingest's CPU per frame (benchmarks/edge_capacity.py, docs/pipeline.md). Set
# here, before anything imports numpy; an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:  # the one source of the version is pyproject.toml, read from the installed metadata
    __version__ = version("split-infer")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
