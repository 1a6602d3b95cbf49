"""Generated gRPC stubs for protos/split_infer.proto (regenerate with scripts/gen_protos.sh).

The generated code checks its runtime: grpcio >= 1.85.1 and protobuf >= 7.35 (pyproject pins both).
"""

from . import split_infer_pb2 as pb
from . import split_infer_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
