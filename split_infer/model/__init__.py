"""The model: weights, YOLO graphs, the split, and the pre- and post-processing both halves share.

Everything here that needs torch imports it inside the function that does, so the edge runtime
(preprocess, names, export's IR lookup) stays torch-free.
"""
