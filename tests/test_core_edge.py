"""The OpenVINO edge extractor: exact in f32, within tolerance in the default precision, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from split_infer.cloud.head import Head
from split_infer.codec import bottleneck, make_decoder, make_encoder
from split_infer.codec.basis import Basis, resolve
from split_infer.codec.learned import LearnedModel
from split_infer.codec.train import TorchBottleneck, save
from split_infer.edge.extractor import EdgeExtractor, ExtractorError, check_device
from split_infer.model.export import export_edge
from split_infer.model.loading import load_model
from split_infer.model.partition import partition
from support.data import ROOT, bus_jpg, yolov5s_ready

pytestmark = pytest.mark.unit

IMGSZ = (320, 192)
# bf16 (this CPU's default) keeps 8 bits of mantissa: documented tolerance on the crossing tensor,
# relative to its largest magnitude.
DEFAULT_PRECISION_REL_TOL = 0.05


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    yolov5s_ready()
    return export_edge("yolov5s", 4, IMGSZ, tmp_path_factory.mktemp("ir"))


def _reference(x):
    edge, _ = partition(load_model("yolov5s"), 4)
    with torch.no_grad():
        return edge(torch.from_numpy(x))["x4"].numpy()


@pytest.mark.e2e
def test_export_writes_ir_and_metadata(ir_dir):
    meta = json.loads((ir_dir / "edge.json").read_text())
    assert meta["model"] == "yolov5s" and meta["cut"] == 4 and meta["imgsz"] == [320, 192]
    assert meta["outputs"] == [{"name": "x4", "shape": [128, 24, 40], "dtype": "float32"}]
    assert meta["input"]["scale"] == pytest.approx(1 / 255) and meta["precision"] == "fp32"
    assert (ir_dir / "edge.xml").exists() and (ir_dir / "edge.bin").exists()


@pytest.mark.e2e
def test_openvino_f32_matches_pytorch(ir_dir):
    x = np.random.default_rng(0).random((2, 3, 192, 320), dtype=np.float32)
    ref = _reference(x)
    out = EdgeExtractor(ir_dir, "CPU", precision="f32").infer(x)["x4"]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-3 * np.abs(ref).max()


@pytest.mark.e2e
def test_openvino_default_precision_within_documented_tolerance(ir_dir):
    x = np.random.default_rng(0).random((1, 3, 192, 320), dtype=np.float32)
    ref = _reference(x)
    out = EdgeExtractor(ir_dir, "AUTO").infer(x)["x4"]
    assert np.abs(out - ref).max() <= DEFAULT_PRECISION_REL_TOL * np.abs(ref).max()


def test_myriad_gets_a_clear_error():
    with pytest.raises(ExtractorError, match=r"MYRIAD plugin.*removed.*2023\.0.*2022\.3.*NPU"):
        check_device("MYRIAD")
    assert check_device("AUTO:NPU,CPU") == "AUTO:NPU,CPU"


def test_missing_ir_is_a_clear_error(tmp_path):
    with pytest.raises(ExtractorError, match="split-infer export"):
        EdgeExtractor(tmp_path)


def test_edge_runtime_imports_neither_torch_nor_ultralytics():
    code = ("import sys, split_infer.edge.extractor, split_infer.model.preprocess, split_infer.codec\n"
            "import importlib.util\n"
            "if importlib.util.find_spec('split_infer.edge.node'): import split_infer.edge.node\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics', 'torchvision')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_detect_cli_writes_json_lines(tmp_path):
    out = tmp_path / "dets.jsonl"
    result = subprocess.run([sys.executable, "-m", "split_infer", "detect", str(bus_jpg()), "--imgsz", "640x640",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["frame"] == 0
    names = [d["class_name"] for d in lines[0]["detections"]]
    assert "bus" in names and names.count("person") >= 3
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["frames"] == 1 and 0 < summary["bytes_per_frame"] < summary["raw_float32_bytes_per_frame"]


@pytest.mark.e2e
def test_detect_cli_on_a_missing_source_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "split_infer", "detect", str(tmp_path / "nope.mp4")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "cannot open video or stream" in result.stderr


@pytest.mark.e2e
def test_head_detects_from_openvino_features_and_honours_its_thread_setting(ir_dir):
    extractor = EdgeExtractor(ir_dir, "CPU")
    x, lb = extractor.preprocess(cv2.imread(str(bus_jpg())))
    head = Head("yolov5s", 4, IMGSZ, runtime="openvino", threads=1)
    assert head._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    dets = head.detect(extractor.infer(x), [lb])[0]
    assert "bus" in [d["class_name"] for d in dets]
    assert all(0 <= d["box"][0] <= d["box"][2] <= lb.src_w for d in dets)


@pytest.mark.e2e
def test_learned_codec_encoder_runs_inside_the_edge_ir(tmp_path):
    torch.manual_seed(0)
    arch = bottleneck.layout(res_blocks=1)  # an untrained bottleneck: the plumbing is tested
    net = TorchBottleneck(arch, bottleneck.init_shapes(128, 6, 16, 24, res_blocks=1), channels=6)
    codec = tmp_path / "models" / "street.npz"
    codec.parent.mkdir()
    save(net.arrays(), str(codec), {"cut": 4, "tensor": "x4", "architecture": arch,
                                    "trained_on": {"video": "synthetic", "frames": [0, 0]}})
    ir = export_edge("yolov5s", 4, IMGSZ, tmp_path / "ir", codec_model=codec)
    meta = json.loads((ir / "edge.json").read_text())
    assert meta["outputs"] == [{"name": "z", "shape": [6, 24, 40], "dtype": "float32"}]
    assert meta["codec_model"]["replaces"] == "x4"

    extractor = EdgeExtractor(ir, "CPU", precision="f32")
    x, _ = extractor.preprocess(cv2.imread(str(bus_jpg())))
    z = extractor.infer(x)["z"]
    x4 = _reference(x[None])
    want = LearnedModel.load(codec).encode(x4)  # the numpy encoder on PyTorch's features
    assert np.abs(z - want).max() <= 1e-3 * np.abs(want).max()
    # Either way the edge sends (nearly) the same latent codes, and the cloud rebuilds x4 from them.
    in_ir = make_decoder(learned_dir=str(codec.parent)).decode(make_encoder(f"learned:{codec}").encode({"z": z}))
    in_numpy = make_decoder(learned_dir=str(codec.parent)).decode(make_encoder(f"learned:{codec}").encode({"x4": x4}))
    assert in_ir["x4"].shape == in_numpy["x4"].shape == (1, 128, 24, 40)
    assert np.abs(in_ir["x4"] - in_numpy["x4"]).mean() <= 1e-2 * np.abs(in_numpy["x4"]).mean()


SHIPPED_BASIS = "yolov5s-cut4-street"  # the video codec's training-free channel reduction


@pytest.mark.e2e
def test_video_codec_basis_runs_inside_the_edge_ir(tmp_path):
    shipped = resolve(SHIPPED_BASIS)
    basis = Basis.load(shipped)
    ir = export_edge("yolov5s", 4, IMGSZ, tmp_path / "ir", codec_model=shipped)
    meta = json.loads((ir / "edge.json").read_text())
    assert meta["outputs"] == [{"name": "x4", "shape": [basis.components, 24, 40], "dtype": "float32"}]
    assert meta["codec_model"]["kind"] == "basis" and meta["codec_model"]["model_id"] == basis.model_id

    extractor = EdgeExtractor(ir, "CPU", precision="f32")
    x, _ = extractor.preprocess(cv2.imread(str(bus_jpg())))
    y = extractor.infer(x)["x4"]
    want = basis.encode(_reference(x[None]))  # numpy's reduction of PyTorch's features
    assert np.abs(y - want).max() <= 1e-3 * np.abs(want).max()
    # the encoder sees a reduced tensor and only codes it; the cloud rebuilds all 128 channels
    spec = f"video:{SHIPPED_BASIS}"
    in_ir = make_decoder().decode(make_encoder(spec, crf=0).encode({"x4": y}))["x4"]
    in_numpy = make_decoder().decode(make_encoder(spec, crf=0).encode({"x4": _reference(x[None])}))["x4"]
    assert in_ir.shape == in_numpy.shape == (1, 128, 24, 40)
    assert np.abs(in_ir - in_numpy).mean() <= 2e-2 * np.abs(in_numpy).mean()


@pytest.mark.e2e
def test_a_learned_reduction_for_the_video_codec_runs_inside_the_edge_ir(tmp_path):
    """`video:<learned.npz>`: the bottleneck's encoder exported into the IR; its latent `z` goes
    into the video codec, and the cloud rebuilds x4 as from the numpy path."""
    torch.manual_seed(0)
    arch = bottleneck.layout(res_blocks=1)  # an untrained bottleneck: the plumbing is tested
    net = TorchBottleneck(arch, bottleneck.init_shapes(128, 8, 16, 24, res_blocks=1), channels=8)
    codec = tmp_path / "models" / "cam.npz"
    save(net.arrays(), str(codec), {"cut": 4, "tensor": "x4", "architecture": arch,
                                    "trained_on": {"video": "synthetic", "frames": [0, 0]}})
    model = LearnedModel.load(codec)
    ir = export_edge("yolov5s", 4, IMGSZ, tmp_path / "ir", codec_model=codec)
    assert json.loads((ir / "edge.json").read_text())["outputs"] == [
        {"name": "z", "shape": [model.components, 24, 40], "dtype": "float32"}]
    extractor = EdgeExtractor(ir, "CPU", precision="f32")
    x, _ = extractor.preprocess(cv2.imread(str(bus_jpg())))
    z = extractor.infer(x)["z"]
    x4 = _reference(x[None])
    want = model.encode(x4)
    assert np.abs(z - want).max() <= 1e-3 * np.abs(want).max()
    spec, models = f"video:{codec}", str(codec.parent)
    in_ir = make_decoder(learned_dir=models).decode(make_encoder(spec, crf=0).encode({"z": z}))["x4"]
    in_numpy = make_decoder(learned_dir=models).decode(make_encoder(spec, crf=0).encode({"x4": x4}))["x4"]
    assert in_ir.shape == in_numpy.shape == (1, 128, 24, 40)
    assert np.abs(in_ir - in_numpy).mean() <= 2e-2 * np.abs(in_numpy).mean()
