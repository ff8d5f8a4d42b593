"""Cited peak compute and memory of the accelerators the benchmarks compare against.

Peaks are the vendors' dense (no structured sparsity) bfloat16 matrix-unit rates per device as
JAX sees it (a GPU, or a TPU chip: v4 and v5p chips are one JAX device each, megacore). They are
data-sheet numbers, not measurements; a model's FLOP utilisation (MFU) is its achieved FLOP/s over
them. Memory is per device: the data-sheet capacity (80e9 bytes for an H100 80 GB, as
`benchmarks/memory_table.py` is asked to use), not what the runtime leaves free (JAX on a GPU
preallocates XLA_PYTHON_CLIENT_MEM_FRACTION = 75% of it by default).

    peak_for_device_kind("NVIDIA H100 80GB HBM3")  ->  the DeviceSpec of "h100", or None

`benchmarks/memory_table.py` and `benchmarks/accelerator_suite.py` import this module from beside
them (Python puts a script's directory first on its module path).
"""

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    name: str  # how tables name it
    peak_bf16_flops: float  # dense bfloat16 FLOP/s per device
    memory_bytes: float  # memory per device
    source: str  # where the numbers are from


DEVICE_SPECS = {
    "h100": DeviceSpec(
        "NVIDIA H100 SXM 80 GB",
        989.4e12,
        80e9,
        "NVIDIA H100 Tensor Core GPU datasheet: BF16 Tensor Core 1,979 TFLOP/s with sparsity "
        "(989 dense), SXM5; 80 GB HBM3",
    ),
    "h100_pcie": DeviceSpec(
        "NVIDIA H100 PCIe 80 GB",
        756e12,
        80e9,
        "NVIDIA H100 Tensor Core GPU datasheet: BF16 1,513 TFLOP/s with sparsity (756 dense), "
        "PCIe; 80 GB HBM2e",
    ),
    "h100_nvl": DeviceSpec(
        "NVIDIA H100 NVL 94 GB",
        835e12,
        94e9,
        "NVIDIA H100 NVL datasheet: BF16 1,671 TFLOP/s with sparsity (835 dense); 94 GB HBM3",
    ),
    "h200": DeviceSpec(
        "NVIDIA H200 141 GB",
        989.4e12,
        141e9,
        "NVIDIA H200 datasheet: BF16 1,979 TFLOP/s with sparsity (989 dense), SXM; 141 GB HBM3e",
    ),
    "a100": DeviceSpec(
        "NVIDIA A100 80 GB",
        312e12,
        80e9,
        "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOP/s dense; 40 or 80 GB HBM2e",
    ),
    "tpu_v4": DeviceSpec(
        "TPU v4 chip",
        275e12,
        32 * GIB,
        "Google Cloud TPU v4 documentation: 275 TFLOP/s bf16 per chip, 32 GiB HBM2 per chip",
    ),
    "tpu_v5e": DeviceSpec(
        "TPU v5e chip",
        197e12,
        16 * GIB,
        "Google Cloud TPU v5e documentation: 197 TFLOP/s bf16 per chip, 16 GiB HBM2 per chip",
    ),
    "tpu_v5p": DeviceSpec(
        "TPU v5p chip",
        459e12,
        95 * GIB,
        "Google Cloud TPU v5p documentation: 459 TFLOP/s bf16 per chip, 95 GiB HBM2e per chip",
    ),
    "tpu_v6e": DeviceSpec(
        "TPU v6e (Trillium) chip",
        918e12,
        32 * GIB,
        "Google Cloud TPU v6e documentation: 918 TFLOP/s bf16 per chip, 32 GiB HBM per chip",
    ),
}

# Substrings of jax.Device.device_kind (lower-cased), most specific first.
_KIND_PATTERNS = (
    ("h100 pcie", "h100_pcie"),
    ("h100 nvl", "h100_nvl"),
    ("h100", "h100"),
    ("h200", "h200"),
    ("a100", "a100"),
    ("v5 lite", "tpu_v5e"),
    ("v5e", "tpu_v5e"),
    ("v5p", "tpu_v5p"),
    ("tpu v5", "tpu_v5p"),
    ("v6 lite", "tpu_v6e"),
    ("v6e", "tpu_v6e"),
    ("tpu v4", "tpu_v4"),
)


def spec_key_for_device_kind(device_kind: str) -> str | None:
    """The DEVICE_SPECS key of a `jax.Device.device_kind` ("NVIDIA H100 80GB HBM3", "TPU v5
    lite", ...), or None for a kind not in the table (a CPU among them)."""
    kind = device_kind.lower()
    for pattern, key in _KIND_PATTERNS:
        if pattern in kind:
            return key
    return None


def peak_for_device_kind(device_kind: str) -> DeviceSpec | None:
    key = spec_key_for_device_kind(device_kind)
    return None if key is None else DEVICE_SPECS[key]
