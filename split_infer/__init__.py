"""split-infer: split-inference video analytics.

The edge runs the first layers of a YOLO detector (the feature extractor) on OpenVINO and
streams compressed feature tensors; the cloud runs the rest of the network (the head).
Importing this package imports nothing heavy: the edge must stay free of torch.
"""

__version__ = "0.1.0"
