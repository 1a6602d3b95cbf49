"""MACs counted off an OpenVINO graph match the hand count; the peak follows the CPU's ISA."""

from __future__ import annotations

import numpy as np
import pytest

from split_infer.model.macs import CpuId, count_macs, macs_per_cycle, peak_macs, read_cpuinfo

pytestmark = pytest.mark.unit


def _tiny_model(batch: int = 1):
    """Conv 3->4 (3x3, pad 1) on 8x8, depthwise 3x3, flatten, MatMul to 10, MatMul (transpose_b) to 5."""
    import openvino as ov
    from openvino import opset13 as ops  # openvino.runtime is gone in OpenVINO 2026

    rng = np.random.default_rng(0)
    x = ops.parameter([batch, 3, 8, 8], np.float32, name="x")
    conv = ops.convolution(x, ops.constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                           [1, 1], [1, 1], [1, 1], [1, 1])
    dw = ops.group_convolution(conv, ops.constant(rng.standard_normal((4, 1, 1, 3, 3)).astype(np.float32)),
                               [1, 1], [1, 1], [1, 1], [1, 1])
    flat = ops.reshape(dw, ops.constant(np.array([-1, 256], np.int64)), special_zero=False)
    fc = ops.matmul(flat, ops.constant(rng.standard_normal((256, 10)).astype(np.float32)), False, False)
    fc2 = ops.matmul(fc, ops.constant(rng.standard_normal((5, 10)).astype(np.float32)), False, True)
    return ov.Model([fc2], [x], "tiny")


# By hand, per frame: conv 4*8*8 outputs x 3 channels x 9 taps; depthwise 4*8*8 x 1 x 9;
# MatMul 10 outputs x 256; MatMul (B transposed, [5, 10]) 5 outputs x 10.
CONV, DEPTHWISE, FC, FC2 = 256 * 27, 256 * 9, 10 * 256, 5 * 10


def test_counts_tiny_model_by_hand():
    count = count_macs(_tiny_model())
    assert [m for _, _, m in count.layers] == [CONV, DEPTHWISE, FC, FC2]
    assert count.by_type == {"Convolution": CONV, "GroupConvolution": DEPTHWISE, "MatMul": FC + FC2}
    assert count.total == CONV + DEPTHWISE + FC + FC2


def test_dynamic_batch_counts_per_frame_and_static_batch_counts_all(tmp_path):
    import openvino as ov

    dynamic = _tiny_model(batch=-1)
    assert count_macs(dynamic).total == CONV + DEPTHWISE + FC + FC2
    path = tmp_path / "tiny4.xml"
    ov.save_model(_tiny_model(batch=4), path)  # a path is read; a fixed batch of 4 is 4 frames of work
    assert count_macs(path).total == 4 * (CONV + DEPTHWISE + FC + FC2)


def test_dynamic_spatial_size_is_refused():
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 3, -1, -1], np.float32)
    conv = ops.convolution(x, ops.constant(np.ones((4, 3, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="dynamic dimension"):
        count_macs(ov.Model([conv], [x]))


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model name\t: Test CPU
cpu MHz\t\t: 2500.000
flags\t\t: fpu fma avx2 {flags}

processor\t: 1
vendor_id\t: SomethingElse
"""


def _cpu(vendor: str, family: int, flags: str) -> CpuId:
    return read_cpuinfo(CPUINFO.format(vendor=vendor, family=family, flags=flags))


def test_reads_the_first_processor():
    cpu = _cpu("AuthenticAMD", 25, "avx512f avx512_vnni")
    assert (cpu.vendor, cpu.family, cpu.model_name, cpu.mhz) == ("AuthenticAMD", 25, "Test CPU", 2500.0)
    assert {"avx512f", "avx512_vnni", "avx2"} <= cpu.flags


@pytest.mark.parametrize(("vendor", "family", "flags", "precision", "expected"), [
    ("AuthenticAMD", 25, "avx512f avx512_bf16 avx512_vnni", "f32", 16),  # Zen 4: 256-bit FMA pipes
    ("AuthenticAMD", 25, "avx512f avx512_bf16 avx512_vnni", "bf16", 32),
    ("AuthenticAMD", 25, "avx512f avx512_bf16 avx512_vnni", "i8", 64),
    ("GenuineIntel", 6, "avx512f avx512_vnni", "f32", 32),  # two 512-bit FMA units
    ("GenuineIntel", 6, "avx512f avx512_vnni", "bf16", 32),  # no native bf16: as fp32
    ("GenuineIntel", 6, "avx512f avx512_vnni", "i8", 128),
    ("GenuineIntel", 6, "avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8", "i8", 2048),
    ("GenuineIntel", 6, "", "i8", 32),  # AVX2 without VNNI
])
def test_macs_per_cycle_by_isa(vendor, family, flags, precision, expected):
    assert macs_per_cycle(_cpu(vendor, family, flags), precision)[0] == expected


def test_peak_is_clock_times_lanes_times_cores():
    peak = peak_macs(_cpu("AuthenticAMD", 25, "avx512f avx512_vnni"), "i8", cores=2)
    assert peak["gmacs_per_s"] == 2.5 * 64 * 2
    assert "VNNI" in peak["why"]
    with pytest.raises(ValueError):
        macs_per_cycle(_cpu("AuthenticAMD", 25, ""), "fp16")
