"""Datasheet peaks of the accelerators we know, looked up by the device's name.

These are the vendors' published dense (no sparsity) tensor-core rates and memory bandwidths: the
denominators of MFU and the ceilings of the roofline. They are not measured throughputs of this project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePeaks:
    name: str
    bf16_tflops: float  # dense bf16 tensor-core peak
    fp8_tflops: float | None  # dense fp8 peak; None where the chip has no fp8 tensor cores
    memory_tbps: float  # HBM/GDDR bandwidth, TB/s


# Matched against torch.cuda.get_device_name() in order: the first substring that occurs wins.
_DATASHEETS: list[tuple[str, DevicePeaks]] = [
    ("H200", DevicePeaks("NVIDIA H200 SXM", 989.4, 1978.9, 4.8)),
    ("H100 NVL", DevicePeaks("NVIDIA H100 NVL", 835.0, 1670.0, 3.9)),
    ("H100 PCIe", DevicePeaks("NVIDIA H100 PCIe", 756.0, 1513.0, 2.0)),
    ("H100", DevicePeaks("NVIDIA H100 SXM", 989.4, 1978.9, 3.35)),
    ("GH200", DevicePeaks("NVIDIA GH200", 989.4, 1978.9, 4.0)),
    ("B200", DevicePeaks("NVIDIA B200", 2250.0, 4500.0, 8.0)),
    ("L40S", DevicePeaks("NVIDIA L40S", 362.0, 733.0, 0.864)),
    ("L4", DevicePeaks("NVIDIA L4", 121.0, 242.5, 0.3)),
    ("A100", DevicePeaks("NVIDIA A100", 312.0, None, 2.0)),
    ("A10G", DevicePeaks("NVIDIA A10G", 70.0, None, 0.6)),
]


def lookup_peaks(device_name: str) -> DevicePeaks | None:
    for key, peaks in _DATASHEETS:
        if key in device_name:
            return peaks
    return None


def current_device_peaks(device: torch.device) -> DevicePeaks | None:
    if device.type != "cuda":
        return None
    return lookup_peaks(torch.cuda.get_device_name(device))


def supports_fp8(device: torch.device) -> bool:
    """Float8 tensor cores need compute capability 8.9 (Ada) or 9.0+ (Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
