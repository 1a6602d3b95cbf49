#!/usr/bin/env bash
# Regenerate the gRPC stubs in split_infer/proto/ from protos/*.proto (commit the output).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
out="$root/split_infer/proto"
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root/protos/split_infer.proto"
# protoc writes a top-level import; make it package-relative so `split_infer.proto` is importable.
sed -i 's/^import split_infer_pb2 as /from . import split_infer_pb2 as /' "$out/split_infer_pb2_grpc.py"
echo "generated stubs in $out"
