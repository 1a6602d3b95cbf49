"""Bjøntegaard delta rate and the pooled agreement with its bootstrap interval: hand-checked cases."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from bdrate import bd_rate, bytes_at, lower_hull
from evaluation import FrameMatches, eligible_classes, pooled_agreement

pytestmark = pytest.mark.unit

CURVE = [(1000.0, 0.70), (2000.0, 0.85), (4000.0, 0.93), (8000.0, 0.97), (16000.0, 0.99)]


def test_half_the_bytes_everywhere_is_minus_fifty_percent() -> None:
    half = [(b / 2, q) for b, q in CURVE]
    pct, interval = bd_rate(half, CURVE)
    assert pct == pytest.approx(-50.0, abs=1e-6) and interval == pytest.approx((0.80, 0.99))
    assert bd_rate(CURVE, half)[0] == pytest.approx(100.0, abs=1e-6)
    assert bd_rate(CURVE, CURVE)[0] == pytest.approx(0.0, abs=1e-9)


def test_hull_drops_dominated_and_non_convex_settings() -> None:
    noisy = CURVE + [(9000.0, 0.95), (3000.0, 0.80), (5000.0, 0.96)]  # (9000, .95) is beaten by (8000, .97)
    hull = lower_hull(noisy)
    assert (9000.0, 0.95) not in hull and hull == sorted(hull, key=lambda p: p[1])
    assert all(b1 < b2 for (b1, _), (b2, _) in pairwise(hull))
    # the hull is at or below every setting's log bytes, at that setting's quality
    for b, q in noisy:
        at = bytes_at(hull, q)
        assert at is None or at <= b * (1 + 1e-9)


def test_no_shared_interval_gives_no_figure() -> None:
    low = [(100.0, 0.5), (200.0, 0.6)]
    assert bd_rate(low, CURVE) == (None, None)
    assert bytes_at(lower_hull(CURVE), 0.995) is None and bytes_at(lower_hull(CURVE), 0.5) is None
    assert bytes_at(lower_hull(CURVE), 0.97) == pytest.approx(8000.0)


def box(x, s, c):
    return [x, 0, x + 10, 10, s, c]


def test_pooled_agreement_weighs_each_reference_box_equally() -> None:
    # 30 frames, each with 3 cars and (in the first 5 frames) one bus; the prediction misses the buses
    ref = [np.array([box(0, .9, 2), box(20, .9, 2), box(40, .9, 2)] + ([box(60, .9, 5)] if i < 5 else []),
                    np.float32) for i in range(30)]
    pred = [r[r[:, 5] == 2] for r in ref]
    assert eligible_classes(ref) == (2,)  # 5 buses are too few to judge a class by
    pooled = pooled_agreement(ref, pred, (2, 5))
    assert pooled == pytest.approx(90 / 95)  # per-class mean would say (1 + 0) / 2
    m = FrameMatches(ref, pred, (2, 5))
    lo, hi = m.bootstrap(resamples=300)
    assert lo < pooled < hi <= 1.0 and hi - lo < 0.1
    assert FrameMatches(ref, ref, (2, 5)).bootstrap(50) == (1.0, 1.0)


def test_class_agnostic_matching_ignores_the_label() -> None:
    ref = [np.array([box(0, .9, 2)], np.float32)]
    pred = [np.array([box(0, .8, 7)], np.float32)]  # a car called a truck
    assert FrameMatches(ref, pred, (2, 7)).ap() == 0.0
    assert FrameMatches(ref, pred, (2, 7), class_agnostic=True).ap() == pytest.approx(1.0)


def test_rate_fidelity_names_each_inner_codec_of_a_learned_family(tmp_path, monkeypatch) -> None:
    """`--reduction-inner cam=h264:veryfast,hevc:fast` sweeps cam's latent under both inner codecs,
    as families video-h264+cam and video-hevc+cam; other reductions keep x264; an unknown inner
    codec is refused."""
    import argparse

    import rate_fidelity

    assert rate_fidelity.inner_codecs("h264:veryfast,hevc:fast") == [("h264", "veryfast"), ("hevc", "fast")]
    for bad in ("vp9:fast", "hevc", "h264:"):
        with pytest.raises(ValueError, match="INNER:PRESET"):
            rate_fidelity.inner_codecs(bad)
    model = tmp_path / "trained" / "m.npz"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    # the family list reads only the model's metadata
    monkeypatch.setattr(rate_fidelity.LearnedModel, "load", lambda path: argparse.Namespace(meta={}))
    args = rate_fidelity.parse_args(["--video", "x.mp4", "--json", "o.json", "--families", "x264",
                                     "--reduction-inner", "cam=h264:veryfast,hevc:fast", "--reduction", f"cam={model}",
                                     "--reduction", f"old={model}"])
    variants, training = rate_fidelity.video_variants(args, tmp_path)
    assert [(f, i, p) for f, i, p, _ in variants] == [("video-h264+cam", "h264", "veryfast"),
                                                      ("video-hevc+cam", "hevc", "fast"),
                                                      ("video-h264+old", "h264", "veryfast")]
    assert [t["label"] for t in training] == ["cam", "old"]
    with pytest.raises(SystemExit):  # refused at parse time, not after the reference detections
        rate_fidelity.parse_args(["--video", "x.mp4", "--json", "o.json", "--reduction-inner", "cam=vp9:fast"])
