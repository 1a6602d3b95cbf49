"""The split is exact at every cut, for YOLOv5s, YOLOv5n and an ultralytics YOLOv8n."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from split_infer.model.loading import load_model
from split_infer.model.partition import crossing, cut_table, first_tensor, partition
from split_infer.model.postprocess import nms_boxes, non_max_suppression
from split_infer.model.preprocess import Letterbox, letterbox, parse_imgsz
from support.data import shared_file, yolov5s_ready

pytestmark = pytest.mark.unit


def _models():
    yolov5s_ready()
    torch.manual_seed(0)
    return {"yolov5s": load_model("yolov5s"), "yolov5n": load_model(shared_file("yolov5n.pt")),
            "yolov8n-random": load_model("yolov8n.yaml")}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["yolov5s", "yolov5n", "yolov8n-random"])
def test_cloud_of_edge_equals_unsplit_at_every_cut(models, name):
    model = models[name]
    torch.manual_seed(1)
    x = torch.rand(2, 3, 192, 320)  # a batch of two rectangular inputs
    with torch.no_grad():
        reference = first_tensor(model(x))
        n_cuts = len(model.model) - 1
        assert n_cuts >= 22
        for cut in range(min(n_cuts, 24)):
            edge, cloud = partition(model, cut)
            feats = edge(x)
            assert list(feats) == [f"x{i}" for i in crossing(model.model, cut)]
            diff = (cloud(feats) - reference).abs().max().item()
            assert diff <= 1e-5, f"{name} cut {cut}: max abs diff {diff}"


def test_cut_out_of_range_is_refused(models):
    with pytest.raises(ValueError, match="cut must be in 0..23"):
        partition(models["yolov5s"], 24)


def test_cut_table_matches_known_sizes(models):
    rows = cut_table(models["yolov5s"], (640, 640))
    assert rows[4]["tensors"] == {"x4": (128, 80, 80)} and rows[4]["values"] == 819_200
    assert rows[9]["values"] == 1_433_600 and list(rows[9]["tensors"]) == ["x4", "x6", "x9"]


def test_letterbox_geometry_and_boxes_back_to_source():
    frame = np.zeros((360, 640, 3), np.uint8)
    x, lb = letterbox(frame, (640, 384))
    assert x.shape == (3, 384, 640) and x.dtype == np.float32
    assert (lb.scale, lb.pad_x, lb.pad_y) == (1.0, 0, 12)
    assert x[:, :12].max() == pytest.approx(114 / 255) and x[:, 12:372].max() == 0
    lb2 = Letterbox.fit(1280, 720, 640, 384)
    box = np.array([[100.0, 112.0, 200.0, 212.0]])
    np.testing.assert_allclose(lb2.boxes_to_source(box), [[200.0, 200.0, 400.0, 400.0]])
    with pytest.raises(ValueError, match="multiples of 32"):
        parse_imgsz("640x380")


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = nms_boxes(boxes, np.array([0.9, 0.8, 0.7]), 0.45)
    assert keep.tolist() == [0, 2]
    # Rows: cx, cy, w, h, obj, 2 classes. Same box, different classes: both survive.
    rows = np.array([[5, 5, 10, 10, 0.9, 1.0, 0.0], [5, 5, 10, 10, 0.9, 0.0, 0.8], [5, 5, 10, 10, 0.1, 1, 0]],
                    np.float32)
    dets = non_max_suppression(rows, conf=0.25, iou=0.45)
    assert dets[:, 5].tolist() == [0.0, 1.0] and dets[0, 4] == pytest.approx(0.9)
