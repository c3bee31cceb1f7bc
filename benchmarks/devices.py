"""Which accelerator a run is on, and what its vendor says it can do: the nominal matmul peaks and
memory of a small table of known devices, each number with the page it comes from.

    lookup("NVIDIA H100 80GB HBM3")  ->  Nominal(name="H100 SXM", bf16=989.5, ...)
    lookup("NVIDIA GH200 480GB")     ->  None   (not in the table: the report says so)

The measured peak (timing.matmul_peak) is what the achieved rates of the report are divided by;
the nominal one stands beside it so that a reader sees how far the measured peak itself is from
the datasheet. Units: TFLOP/s of dense matrix products (NVIDIA prints its tensor-core figures
"with sparsity"; the footnote of each datasheet says dense is half of that, which is what is stored
here), memory in GB as printed, bandwidth in GB/s.

Which vendor figure a measured float32 peak is compared with depends on the precision the matmul
ran at: JAX's default precision computes float32 products with TF32 tensor cores on NVIDIA Ampere
and later and with bfloat16 passes on TPU (https://docs.jax.dev/en/latest/201/precision.html);
`precision="highest"` is true float32 (NVIDIA's non-tensor FP32 figure; TPUs print none).

`device_info()` reads what the report's Device table prints: the device, its count, its memory
(from the runtime), JAX / jaxlib and, on CUDA, the runtime, driver and cuDNN versions.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_NVIDIA_H100 = ("NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/ "
                "(tensor-core figures printed with sparsity, halved here per its footnote)")
_NVIDIA_H200 = ("NVIDIA H200 Tensor Core GPU product page, https://www.nvidia.com/en-us/data-center/h200/ "
                "(tensor-core figures printed with sparsity, halved here per its footnote)")
_NVIDIA_A100 = ("NVIDIA A100 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/"
                "Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (dense figures as printed)")
_NVIDIA_L4 = ("NVIDIA L4 Tensor Core GPU product page, https://www.nvidia.com/en-us/data-center/l4/ "
              "(tensor-core figures printed with sparsity, halved here per its footnote)")


def _tpu(version: str) -> str:
    return f"Google Cloud TPU documentation, TPU {version}, https://cloud.google.com/tpu/docs/{version} (per chip)"


@dataclass(frozen=True)
class Nominal:
    """A device's datasheet figures. bf16 / tf32 / fp32: dense matmul TFLOP/s (None where the vendor
    prints none); memory_gb as printed; bandwidth_gbs in GB/s; source: where the numbers are."""
    name: str
    bf16: float
    tf32: float | None
    fp32: float | None
    memory_gb: float
    bandwidth_gbs: float
    source: str
    tpu: bool = False

    def peak_for(self, dtype: str, precision: str) -> tuple[float | None, str]:
        """(nominal TFLOP/s, which figure) for a measured square matmul of `dtype` ('bfloat16' or
        'float32') at JAX precision `precision` ('default' or 'highest')."""
        if dtype == "bfloat16":
            return self.bf16, "BF16 tensor"
        if precision == "highest":
            return self.fp32, "FP32 (no tensor cores)" if not self.tpu else "none printed"
        if self.tpu:
            return self.bf16, "BF16 (TPU's default float32 matmul is bf16 passes)"
        return self.tf32, "TF32 tensor (JAX's default float32 matmul on Ampere and later)"


# First match wins; the patterns read jax.Device.device_kind. (?<!G) keeps the GH200 superchip
# (an H100-class GPU with other memory, not in the table) from matching H200.
TABLE: tuple[tuple[str, Nominal], ...] = (
    (r"H100.*NVL", Nominal("H100 NVL", 835.5, 417.5, 60.0, 94, 3900, _NVIDIA_H100)),
    (r"H100.*PCIe", Nominal("H100 PCIe", 756.5, 378.0, 51.0, 80, 2000, _NVIDIA_H100)),
    (r"(?<!G)H100", Nominal("H100 SXM", 989.5, 494.5, 67.0, 80, 3350, _NVIDIA_H100)),
    (r"(?<!G)H200.*NVL", Nominal("H200 NVL", 835.5, 417.5, 60.0, 141, 4800, _NVIDIA_H200)),
    (r"(?<!G)H200", Nominal("H200 SXM", 989.5, 494.5, 67.0, 141, 4800, _NVIDIA_H200)),
    (r"A100.*SXM.*80", Nominal("A100 SXM 80GB", 312.0, 156.0, 19.5, 80, 2039, _NVIDIA_A100)),
    (r"A100.*SXM.*40", Nominal("A100 SXM 40GB", 312.0, 156.0, 19.5, 40, 1555, _NVIDIA_A100)),
    (r"A100.*80GB.*PCIe", Nominal("A100 PCIe 80GB", 312.0, 156.0, 19.5, 80, 1935, _NVIDIA_A100)),
    (r"A100.*PCIE.*40", Nominal("A100 PCIe 40GB", 312.0, 156.0, 19.5, 40, 1555, _NVIDIA_A100)),
    (r"\bL4\b", Nominal("L4", 121.0, 60.0, 30.3, 24, 300, _NVIDIA_L4)),
    (r"TPU v4(?! ?lite)", Nominal("TPU v4", 275.0, None, None, 32, 1200, _tpu("v4"), tpu=True)),
    (r"TPU v5 ?lite|TPU v5e", Nominal("TPU v5e", 197.0, None, None, 16, 819, _tpu("v5e"), tpu=True)),
    (r"TPU v5p|TPU v5$", Nominal("TPU v5p", 459.0, None, None, 95, 2765, _tpu("v5p"), tpu=True)),
    (r"TPU v6 ?lite|TPU v6e", Nominal("TPU v6e", 918.0, None, None, 32, 1638, _tpu("v6e"), tpu=True)),
)


def lookup(device_kind: str) -> Nominal | None:
    """The table's entry for a jax device_kind string, or None for a device it does not know."""
    for pattern, nominal in TABLE:
        if re.search(pattern, device_kind, re.IGNORECASE):
            return nominal
    return None


def slug(device_kind: str, backend: str) -> str:
    """A file-name part for the report: the table's name when known ('h100-sxm'), the backend on
    CPU ('cpu'), else the device kind in lower case with runs of other characters as '-'."""
    if backend == "cpu":
        return "cpu"
    known = lookup(device_kind)
    text = known.name if known else device_kind
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or backend


# ---------------------------------------------------------------------------------------------
# What the runtime says about the device
# ---------------------------------------------------------------------------------------------

def _cuda_versions() -> dict:
    """CUDA runtime / driver / cuDNN versions as jaxlib reports them; {} without a CUDA plugin."""
    out = {}
    try:
        from jax._src.lib import cuda_versions                    # None without a CUDA plugin
    except Exception:                                            # older or newer jaxlib layouts
        return out
    if cuda_versions is None:
        return out
    for key, name in (("cuda_runtime", "cuda_runtime_get_version"), ("cuda_driver", "cuda_driver_get_version"),
                      ("cudnn", "cudnn_get_version"), ("cublas", "cublas_get_version")):
        fn = getattr(cuda_versions, name, None)
        try:
            if fn is not None:
                out[key] = str(fn())
        except Exception:
            pass
    return out


def _nvidia_smi() -> str | None:
    """One line per GPU from nvidia-smi (name, driver, memory, clocks, power limit), if it runs."""
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def device_info() -> dict:
    """The device the run measures (JAX's first default device) and the software around it."""
    import jax
    import jaxlib

    devices = jax.devices()
    d = devices[0]
    stats = None
    try:
        stats = d.memory_stats()
    except Exception:                                            # backends without memory stats
        pass
    out = {
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "device_count": len(devices),
        "platform_version": getattr(d.client, "platform_version", "unknown"),
        "memory_bytes": int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        **_cuda_versions(),
    }
    smi = _nvidia_smi() if out["backend"] == "gpu" else None
    if smi:
        out["nvidia_smi"] = smi
    known = lookup(d.device_kind)
    out["nominal"] = known.name if known else None
    out["slug"] = slug(d.device_kind, out["backend"])
    return out
