"""Arithmetic of an OpenVINO model and the CPU's peak for it: the two sides of "how close to the limit".

`count_macs` reads multiply-accumulates per frame off the IR graph (Convolution, GroupConvolution,
MatMul: output elements x input channels per group x kernel size, or x the contracted dimension),
so the edge can report it without torch; an INT8 IR counts the same, its FakeQuantize nodes are
not arithmetic of that kind. `peak_macs` is the CPU's nominal peak from /proc/cpuinfo, with the
per-core MACs per cycle assumed for its ISA written out, since no register tells it. Standard
library only; `count_macs` imports OpenVINO only to read a path (a model object brings its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COUNTED = ("Convolution", "GroupConvolution", "MatMul")


@dataclass
class MacCount:
    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    layers: list[tuple[str, str, int]] = field(default_factory=list)  # (friendly name, op type, MACs)


def _static(shape: Any, what: str) -> list[int]:
    """A partial shape as ints per frame: a dynamic batch (dim 0) counts as 1, any other dynamic dim is an error."""
    dims = []
    for i, d in enumerate(shape):
        if d.is_static:
            dims.append(d.get_length())
        elif i == 0:
            dims.append(1)
        else:
            raise ValueError(f"{what}: dynamic dimension {i} in {shape}; reshape the model to a fixed size first")
    return dims


def node_macs(node: Any) -> int:
    """MACs of one Convolution / GroupConvolution / MatMul node per frame (0 for any other op)."""
    kind = node.get_type_name()
    if kind not in COUNTED:
        return 0
    name = node.get_friendly_name()
    out = math.prod(_static(node.get_output_partial_shape(0), name))
    w = _static(node.input(1).get_partial_shape(), name)
    if kind == "Convolution":  # weights [C_out, C_in, k...]
        return out * math.prod(w[1:])
    if kind == "GroupConvolution":  # weights [G, C_out/G, C_in/G, k...]
        return out * math.prod(w[2:])
    a = _static(node.input(0).get_partial_shape(), name)
    if len(a) == 1:  # a vector: its length is the contracted dimension
        return out * a[0]
    return out * (a[-2] if node.get_attributes().get("transpose_a") else a[-1])


def count_macs(model: Any) -> MacCount:
    """Multiply-accumulates per frame of an OpenVINO model (or the path of its .xml)."""
    if isinstance(model, str | Path):
        import openvino as ov  # the edge has it; only a path needs it here

        model = ov.Core().read_model(str(model))
    count = MacCount()
    for node in model.get_ordered_ops():
        macs = node_macs(node)
        if macs:
            kind = node.get_type_name()
            count.total += macs
            count.by_type[kind] = count.by_type.get(kind, 0) + macs
            count.layers.append((node.get_friendly_name(), kind, macs))
    return count


@dataclass
class CpuId:
    vendor: str
    family: int
    model_name: str
    mhz: float  # /proc/cpuinfo "cpu MHz": the nominal or current clock, not the turbo one
    flags: frozenset[str]


def read_cpuinfo(text: str | None = None) -> CpuId:
    """The first processor's vendor, family, model name, clock and flags from /proc/cpuinfo."""
    if text is None:
        text = Path("/proc/cpuinfo").read_text()
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if info:  # blank line: the first processor is done
                break
            continue
        info.setdefault(key.strip(), value.strip())
    return CpuId(vendor=info.get("vendor_id", "unknown"), family=int(info.get("cpu family", "0") or 0),
                 model_name=info.get("model name", "unknown"), mhz=float(info.get("cpu MHz", "0") or 0),
                 flags=frozenset(info.get("flags", "").split()))


def fp32_macs_per_cycle(cpu: CpuId) -> tuple[int, str]:
    """fp32 FMA lanes a core retires per cycle, and why that figure."""
    if "avx512f" in cpu.flags:
        if cpu.vendor == "AuthenticAMD" and cpu.family < 26:
            return 16, "AMD Zen 4 (family 25): AVX-512 runs on two 256-bit FMA pipes, 2 x 8 fp32 lanes"
        if cpu.vendor == "AuthenticAMD":
            return 32, "AMD Zen 5 (family 26): two 512-bit FMA pipes, 2 x 16 fp32 lanes"
        return 32, "Intel Xeon with AVX-512: two 512-bit FMA units (ports 0+5), 2 x 16 fp32 lanes " \
                   "(one-FMA-unit parts would be half)"
    if "fma" in cpu.flags and "avx2" in cpu.flags:
        return 16, "AVX2 + FMA: two 256-bit FMA units, 2 x 8 fp32 lanes"
    return 8, "SSE only: assumed 2 x 4 fp32 lanes (mul + add)"


def macs_per_cycle(cpu: CpuId, precision: str) -> tuple[int, str]:
    """Per-core MACs per cycle for `precision` (f32, bf16 or i8) on this CPU, and the reasoning."""
    base, why = fp32_macs_per_cycle(cpu)
    if precision == "f32":
        return base, why
    if precision == "bf16":
        if "amx_bf16" in cpu.flags:
            return 1024, "AMX-BF16 (TDPBF16PS): 1024 bf16 MACs per cycle per core"
        if "avx512_bf16" in cpu.flags:
            return 2 * base, f"avx512_bf16 (VDPBF16PS): 2 bf16 products per fp32 lane, 2 x fp32; fp32: {why}"
        return base, f"no native bf16: as fp32 (OpenVINO keeps f32); fp32: {why}"
    if precision == "i8":
        if "amx_int8" in cpu.flags:
            return 2048, "AMX-INT8 (TDPBUSD): 2048 int8 MACs per cycle per core"
        if "avx512_vnni" in cpu.flags or "avx_vnni" in cpu.flags:
            return 4 * base, f"VNNI (VPDPBUSD): 4 u8 x s8 products per 32-bit lane, 4 x fp32; fp32: {why}"
        return 2 * base, f"no VNNI: VPMADDUBSW + VPMADDWD, about 2 x fp32; fp32: {why}"
    raise ValueError(f"precision {precision!r}: f32, bf16 or i8")


def peak_macs(cpu: CpuId, precision: str, cores: int) -> dict[str, Any]:
    """Nominal peak GMAC/s of `cores` cores at /proc/cpuinfo's clock, with the assumptions behind it."""
    per_cycle, why = macs_per_cycle(cpu, precision)
    return {"precision": precision, "cores": cores, "mhz": cpu.mhz, "macs_per_cycle_per_core": per_cycle,
            "gmacs_per_s": round(cpu.mhz / 1000 * per_cycle * cores, 1), "why": why,
            "clock_note": "/proc/cpuinfo 'cpu MHz' (nominal or current clock, not turbo; under a hypervisor, "
                          "the host's reported clock); a vCPU may share its physical core's FMA pipes with another"}
