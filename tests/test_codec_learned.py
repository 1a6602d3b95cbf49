"""The learned bottleneck: numpy runtime == torch training graph, wire round trip, model lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from split_infer.codec import CodecError, bottleneck, make_decoder, make_encoder
from split_infer.codec.bottleneck import conv
from split_infer.codec.cli import TRAIN_PRECISIONS, main
from split_infer.codec.learned import LearnedModel
from split_infer.codec.train import Precision, TorchBottleneck, autocast_dtype, draw_frames, save
from split_infer.codec.wire import unpack
from support.data import street_video

pytestmark = pytest.mark.unit


ARCH = bottleneck.layout(res_blocks=1)


def small_net() -> TorchBottleneck:
    torch.manual_seed(0)
    net = TorchBottleneck(ARCH, bottleneck.init_shapes(32, 6, 16, 24, res_blocks=1), channels=6)
    with torch.no_grad():  # a residual block that is not the identity, so the test can see it
        for k, v in net.weights().items():
            if k.startswith("dec_r0.b"):
                v.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("learned") / "m.npz"
    save(small_net().arrays(), str(path), {"cut": 4, "tensor": "x4", "architecture": ARCH,
                                           "trained_on": {"video": "synthetic", "frames": [0, 0]}})
    return path


def feats(i: int = 0) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1, 32, 12, 20)).astype(np.float32)
    return base + 0.01 * i * np.random.default_rng(i).standard_normal(base.shape).astype(np.float32)


def test_numpy_conv_matches_torch() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7, 9)).astype(np.float32)
    for k in (1, 3):
        w = rng.standard_normal((4, 5, k, k)).astype(np.float32)
        b = rng.standard_normal(4).astype(np.float32)
        ref = torch.nn.functional.conv2d(torch.from_numpy(x[None]), torch.from_numpy(w), torch.from_numpy(b),
                                         padding=k // 2)[0].numpy()
        np.testing.assert_allclose(conv(x, w, b), ref, rtol=1e-4, atol=1e-4)


def test_numpy_runtime_matches_the_trained_network(model_file: Path) -> None:
    m = LearnedModel.load(model_file)
    assert (m.channels, m.components, m.arch) == (32, 6, ARCH)
    net = small_net()
    x = feats()
    with torch.no_grad():
        y_ref = net.encode(torch.from_numpy(x)).numpy()
        x_ref = net.decode(torch.from_numpy(np.round(y_ref))).numpy()
    np.testing.assert_allclose(m.encode(x), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.decode(np.round(y_ref)), x_ref, rtol=1e-4, atol=1e-4)


def test_learned_stream_round_trip(model_file: Path) -> None:
    m = LearnedModel.load(model_file)
    enc = make_encoder(f"learned:{model_file}", key_interval=4)
    dec = make_decoder(learned_dir=str(model_file.parent))
    for i in range(6):
        x = feats(i)
        p = enc.encode({"x4": x})
        frame = unpack(p)
        assert frame.codec == "learned" and frame.key == (i % 4 == 0) and frame.params["model"] == m.model_id
        out = dec.decode(p)["x4"]
        # exactly the decoder network applied to the rounded latent (deadzone 1 = lossless latent)
        np.testing.assert_allclose(out, m.decode(np.clip(np.round(m.encode(x)), -128, 127)), rtol=1e-4, atol=1e-4)


def test_coarser_step_spends_fewer_bytes(model_file: Path) -> None:
    sizes = [len(make_encoder(f"learned:{model_file}", step=s).encode({"x4": feats()})) for s in (1.0, 4.0)]
    assert sizes[1] < sizes[0]


def test_learned_frames_need_the_model(model_file: Path, tmp_path: Path) -> None:
    p = make_encoder(f"learned:{model_file}").encode({"x4": feats()})
    with pytest.raises(CodecError, match="learned_dir"):
        make_decoder().decode(p)
    with pytest.raises(CodecError, match="not found"):
        make_decoder(learned_dir=str(tmp_path)).decode(p)
    with pytest.raises(CodecError, match="exactly the tensor"):
        make_encoder(f"learned:{model_file}").encode({"x6": feats()})
    with pytest.raises(FileNotFoundError):
        make_encoder(f"learned:{tmp_path / 'nope.npz'}")


def test_lost_learned_frame_is_refused(model_file: Path) -> None:
    enc = make_encoder(f"learned:{model_file}", key_interval=100)
    dec = make_decoder(learned_dir=str(model_file.parent))
    p = [enc.encode({"x4": feats(i)}) for i in range(3)]
    dec.decode(p[0])
    with pytest.raises(CodecError, match="lost"):
        dec.decode(p[2])


def test_adaptive_learned_encoder_meets_a_budget(model_file: Path) -> None:
    fps = 10.0

    def rate(**kw) -> float:
        e = make_encoder(f"learned:{model_file}", key_interval=10, **kw)
        return float(np.mean([len(e.encode({"x4": feats(i % 40)})) for i in range(30)])) * fps

    full, cheapest = rate(), rate(step=6.0, deadzone=2)
    budget = (full + cheapest) / 2
    enc = make_encoder(f"learned:{model_file}", budget_bps=budget, fps=fps, key_interval=10, start=0)
    dec = make_decoder(learned_dir=str(model_file.parent))
    sizes = []
    for i in range(80):
        p = enc.encode({"x4": feats(i % 40)})
        dec.decode(p)
        sizes.append(len(p))
    assert np.mean(sizes[-10:]) * fps <= budget
    rep = enc.report()
    assert rep["codec"] == "learned" and rep["level"] > 0 and rep["estimated_bps"] <= budget


@pytest.mark.e2e
def test_cli_trains_and_fine_tunes_on_real_footage(tmp_path: Path, capsys) -> None:
    """`split-infer codec train` end to end on the real clip (a few steps: this checks the
    workflow, not the quality), then a per-camera fine-tune from it, then `codec info`."""
    video = street_video()
    base, tuned = tmp_path / "base.npz", tmp_path / "cam.npz"
    assert main(["train", "--footage", f"{video}@0:8/4", "--steps", "2", "--batch", "2", "--threads", "1",
                 "--precision", "bf16", "--mirror", "--out", str(base)]) == 0
    meta = LearnedModel.load(base).meta
    assert meta["precision"] == "bf16" and meta["mirror"] is True
    assert meta["trained_on"][0]["rows"] == [0, 4]  # frames 0 and 4, each with its mirror image
    assert main(["train", "--footage", f"{video}@8:12/4", "--init", str(base), "--steps", "1", "--batch", "2",
                 "--threads", "1", "--out", str(tuned)]) == 0
    m = LearnedModel.load(tuned)
    assert m.meta["steps"] == 1 and m.meta["architecture"] == LearnedModel.load(base).arch
    assert m.meta["trained_on"][0]["frames"] == [8, 12] and m.meta["fine_tuned_from"] == str(base)
    assert m.model_id != LearnedModel.load(base).model_id
    capsys.readouterr()
    assert main(["info", str(tuned)]) == 0
    assert m.model_id in capsys.readouterr().out
    x = np.random.default_rng(0).random((1, 128, 48, 80), np.float32)
    p = make_encoder(f"learned:{tuned}").encode({"x4": x})
    assert make_decoder(learned_dir=str(tmp_path)).decode(p)["x4"].shape == (1, 128, 48, 80)


def test_video_codec_carries_a_learned_latent_at_its_trained_step(model_file: Path) -> None:
    """`video:<learned.npz>`: the learned encoder's latent in the mosaic, coded on integer steps
    around the key frame's channel means; with a lossless inner codec the cloud gets exactly the
    decoder applied to those codes."""
    m = LearnedModel.load(model_file)
    enc = make_encoder(f"video-crf0:{model_file}", key_interval=3)
    dec = make_decoder(learned_dir=str(model_file.parent))
    offset = None
    for i in range(5):
        x = feats(i)
        p = enc.encode({"x4": x})
        frame = unpack(p)
        assert frame.codec == "video" and frame.params["reduction"] == m.model_id and frame.key == (i % 3 == 0)
        (t,) = frame.tensors
        assert t.shape == (1, m.components, 12, 20)
        if frame.key:
            scale, offset = t.affine()
            assert np.all(scale == m.code_step)
        assert offset is not None
        y = m.encode(x)
        codes = np.clip(np.round((y - offset[None, :, None, None]) / m.code_step), 0, 255)
        want = m.decode(codes * m.code_step + offset[None, :, None, None])
        np.testing.assert_allclose(dec.decode(p)["x4"], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(CodecError, match="not found"):
        make_decoder().decode(make_encoder(f"video:{model_file}").encode({"x4": feats()}))


def test_each_footage_entry_weighs_the_same_in_a_batch() -> None:
    """A 10-frame clip beside a 990-frame one still fills about half of the batches' rows."""
    spans = [{"rows": [0, 990]}, {"rows": [990, 1000]}]
    rows = draw_frames(np.random.default_rng(0), spans, 4000)
    assert rows.min() >= 0 and rows.max() < 1000
    share = float(np.mean(rows >= 990))
    assert 0.45 < share < 0.55, share
    assert len(set(rows[rows >= 990].tolist())) == 10  # every frame of the short clip is drawn


def test_training_precision_choices() -> None:
    """The CLI's torch-free list is train.Precision; fp32 means no autocast, auto follows AMX."""
    from typing import get_args

    from split_infer.model.macs import read_cpuinfo

    assert TRAIN_PRECISIONS == get_args(Precision)
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") is torch.bfloat16
    has_amx = "amx_bf16" in read_cpuinfo().flags
    assert autocast_dtype("auto") is (torch.bfloat16 if has_amx else None)
