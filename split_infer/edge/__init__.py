"""The edge runtime: OpenVINO, OpenCV, gRPC and numpy only (never torch or ultralytics)."""
