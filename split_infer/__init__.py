"""split-infer: split-inference video analytics.

The edge runs the first layers of a YOLO detector (the feature extractor) on OpenVINO and
streams compressed feature tensors; the cloud runs the rest of the network (the head).
Importing this package imports nothing heavy: the edge must stay free of torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the one source of the version is pyproject.toml, read from the installed metadata
    __version__ = version("split-infer")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
