"""The video codec's channel reduction: exact on low-rank features, the consumer metric, files, streams."""

from __future__ import annotations

import numpy as np
import pytest

from split_infer.codec import CodecError, make_decoder, make_encoder
from split_infer.codec.basis import SHIPPED_DIR, Basis, from_features

pytestmark = pytest.mark.unit

C, H, W = 16, 8, 12


def low_rank(n: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix, offset = rng.standard_normal((C, rank)), rng.standard_normal(C)  # the same subspace for any n
    z = rng.standard_normal((n, rank, H, W))
    return (np.einsum("cr,nrhw->nchw", mix, z) + offset[None, :, None, None]).astype(np.float32)


@pytest.mark.parametrize("metric", ["identity", "random"])
def test_features_of_rank_k_round_trip_through_k_components(metric: str) -> None:
    x = low_rank(20, 5)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((C, C))
    m = np.eye(C) if metric == "identity" else a @ a.T + 0.1 * np.eye(C)
    b = from_features(x, m, 5, {"tensor": "x4"})
    assert b.meta["variance_kept"] == pytest.approx(1.0, abs=1e-6)
    for f in low_rank(3, 5, seed=0)[:, None]:  # new frames in the same affine subspace
        assert np.allclose(b.decode(b.encode(f)), f, atol=1e-3)
    fewer = from_features(x, m, 2, {"tensor": "x4"})
    assert fewer.meta["variance_kept"] < 1.0 and not np.allclose(fewer.decode(fewer.encode(x[:1])), x[:1], atol=1e-2)


def test_consumer_metric_weighs_error_where_the_head_reads_it() -> None:
    # channel 0 is what the consumers read; channel 1 varies more but nobody reads it
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, C, H, W)).astype(np.float32)
    x[:, 1] *= 10
    m = np.full(C, 1e-3)
    m[0] = 1.0
    b = from_features(x, np.diag(m), 1, {})
    y = b.decode(b.encode(x[:1]))
    assert np.abs(y[0, 0] - x[0, 0]).max() < 1e-3  # kept exactly
    plain = from_features(x, np.eye(C), 1, {})  # plain PCA keeps the loud channel instead
    y = plain.decode(plain.encode(x[:1]))
    assert np.abs(y[0, 1] - x[0, 1]).max() < 0.1 and np.abs(y[0, 0] - x[0, 0]).mean() > 0.5


def test_file_round_trip_and_id(tmp_path) -> None:
    b = from_features(low_rank(10, 4), np.eye(C), 4, {"tensor": "x4", "trained_on": {"video": "v.mp4"}})
    path = b.save(tmp_path / "cam.basis.npz")
    again = Basis.load(path)
    assert again.model_id == b.model_id and again.meta == b.meta
    with pytest.raises(ValueError, match="basis.npz"):
        b.save(tmp_path / "cam.npz")
    (tmp_path / "bad.basis.npz").write_bytes(b"not a zip")
    with pytest.raises(CodecError):
        Basis.load(tmp_path / "bad.basis.npz")
    with pytest.raises(CodecError, match="takes"):
        b.encode(np.zeros((1, C + 1, H, W), np.float32))


def test_video_stream_with_a_basis_decodes_where_the_cloud_has_the_file(tmp_path) -> None:
    x = low_rank(6, 4, seed=3)
    b = from_features(x, np.eye(C), 4, {"tensor": "x4"})
    path = b.save(tmp_path / "cam.basis.npz")
    enc = make_encoder("video", reduction=str(path), crf=0, key_interval=3)
    payloads = [enc.encode({"x4": f[None]}) for f in x]
    dec = make_decoder(learned_dir=str(tmp_path))
    for f, p in zip(x, payloads, strict=True):
        y = dec.decode(p)["x4"]
        assert y.shape == (1, C, H, W)
        assert np.abs(y - f[None]).mean() < 0.05 * np.abs(f).mean()
    with pytest.raises(CodecError, match="not found"):
        make_decoder().decode(payloads[0])  # no folder holds this basis
    with pytest.raises(CodecError, match="reduces exactly"):
        make_encoder("video", reduction=str(path)).encode({"x3": x[:1]})


def test_the_shipped_basis_fits_yolov5s_cut_4() -> None:
    shipped = sorted(SHIPPED_DIR.glob("*.basis.npz"))
    assert shipped, f"no basis ships in {SHIPPED_DIR}"
    for path in shipped:
        b = Basis.load(path)
        assert (b.channels, b.tensor, b.meta["cut"]) == (128, "x4", 4) and b.components < b.channels
        assert {"video", "sha256", "frames"} <= set(b.meta["trained_on"]) and b.meta["command"]


@pytest.mark.e2e
def test_consumer_metric_of_yolov5s_cut_4_matches_its_convolutions() -> None:
    # torch, a heavy dependency, is imported by these: only this test of the module needs them
    from split_infer.codec.calibrate import consumer_metric
    from split_infer.model.loading import load_model
    from split_infer.model.partition import partition

    _, cloud = partition(load_model("yolov5s"), 4)
    m = consumer_metric(cloud, 4, 128)
    layers = cloud.all_layers
    w5 = layers[5].conv.weight.detach().numpy()
    wa = layers[17].cv1.conv.weight.detach().numpy()[:, 128:]
    wb = layers[17].cv2.conv.weight.detach().numpy()[:, 128:]
    want = np.einsum("oikl,ojkl->ij", w5, w5) + np.einsum("oikl,ojkl->ij", wa, wa) + np.einsum("oikl,ojkl->ij", wb, wb)
    assert np.allclose(m, want, rtol=1e-5) and np.all(np.linalg.eigvalsh(m) > -1e-6)
