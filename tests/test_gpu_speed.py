"""benchmarks/gpu_speed.py on a CPU: `--dry` runs every section and config in seconds, one row per
measurement even where one fails; FLOPs are counted on the meta device as a real step counts
them; the peak table tells GPUs apart by name; compiled configs are skipped, with the reason,
where no kernel can be built. The script imports neither Snakemake nor DVC (the GPU machine has
neither)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_speed  # noqa: E402

# Runs the script with snakemake, dvc and flyp.workflow unimportable, as on the GPU machine.
WITHOUT_WORKFLOW = """
import runpy, sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("snakemake", "dvc") or name.startswith("flyp.workflow"):
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Missing())
sys.path.insert(0, "benchmarks")
sys.argv = ["gpu_speed.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu_speed.py", run_name="__main__")
"""


def run_dry(tmp_path, *args, env=None):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_WORKFLOW, "--dry", "--json-out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["results"], done.stdout


def test_dry_run_has_a_row_per_configuration_when_some_fail(tmp_path):
    failing = ["train flyp b4 tf32", "train ft b8 bf16+compile", "eval bf16", "data eval w0"]
    rows, stdout = run_dry(tmp_path, "--fail", ",".join(failing))
    labels = [row["label"] for row in rows]
    configs = ["fp32", "tf32", "bf16", "bf16+compile", "bf16+gc"]
    expected = [
        *(f"flops {m} b{b}" for m in ("flyp", "ft") for b in (4, 8)),
        *(f"train {m} b{b} {c}" for m in ("flyp", "ft") for b in (4, 8) for c in configs),
        *(f"eval {p}" for p in ("fp32", "tf32", "bf16")),
        *(f"data {t} w{w}" for t in ("train", "eval") for w in (0, 1)),
        "data end-to-end",
    ]
    assert sorted(labels) == sorted(expected)  # one row each, none lost to a failure
    for row in rows:
        if row["label"] in failing:
            assert row["error"].startswith("RuntimeError: injected failure"), row
        else:
            assert "error" not in row and "skipped" not in row, row
    train = [row for row in rows if row["section"] == "train" and "error" not in row]
    assert all(row["images_per_s"] > 0 and row["step_tflop"] > 0 for row in train)
    assert all(row["mfu"] is None for row in train)  # a CPU: no peak known, MFU n/a
    assert "unknown GPU, MFU n/a" in stdout
    assert f"{len(expected)} rows, {len(failing)} failed, 0 skipped in " in stdout


def test_compiled_configs_are_skipped_where_no_kernel_can_be_built(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    args = ["--dry", "--sections", "train", "--configs", "fp32,bf16+compile"]
    args += ["--batch-sizes", "4", "--compile-backend", "inductor", "--json-out", str(out)]
    monkeypatch.setattr(sys, "argv", ["gpu_speed.py", *args])
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # inductor's C++ compiler on a CPU
    threads = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        gpu_speed.main()
    finally:  # the process's threads and TF32 flags as they were
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    rows, stdout = json.loads(out.read_text())["results"], capsys.readouterr().out
    skipped = [row for row in rows if "skipped" in row]
    assert [row["label"] for row in skipped] == [
        "train flyp b4 bf16+compile",
        "train ft b4 bf16+compile",
    ]
    assert all("no C compiler" in row["skipped"] for row in skipped)
    assert "+compile configs skipped: no C compiler" in stdout
    assert all("images_per_s" in row for row in rows if row["label"].endswith("fp32"))


@pytest.mark.parametrize("method", ["flyp", "ft"])
def test_flops_counted_on_the_meta_device_equal_a_real_step(method):
    """On the meta device attention runs as its matmuls (bmm), which FlopCounterMode counts, as it
    counts CUDA's fused attention kernels; the CPU's fused kernel it does not count, so the real
    step here runs attention as matmuls too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    meta = gpu_speed.step_flops(method, "flyp-fixture-vit", 4, 32)
    with sdpa_kernel(SDPBackend.MATH):
        real = gpu_speed.step_flops(method, "flyp-fixture-vit", 4, 32, torch.device("cpu"))
    assert meta == real > 0


@pytest.mark.parametrize(
    ("name", "expected", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200 SXM", 989.4),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0),
        ("NVIDIA GH200 480GB", None, None),
        ("NVIDIA L4", None, None),
        ("x86_64", None, None),
    ],
)
def test_the_peak_table_tells_gpus_apart_by_name(name, expected, bf16):
    gpu, peaks = gpu_speed.gpu_peaks(name)
    assert gpu == expected
    assert (peaks or {}).get("bf16") == bf16


def test_compile_is_blocked_on_cuda_without_triton_or_a_c_compiler(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert gpu_speed.compile_blocker(cuda, "eager") is None  # builds nothing
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton fails
    assert gpu_speed.compile_blocker(cuda, "inductor").startswith("triton does not import")
    monkeypatch.setitem(sys.modules, "triton", object())
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(gpu_speed.shutil, "which", lambda name: None)
    assert gpu_speed.compile_blocker(cuda, "inductor") == (
        "no C compiler to build kernels (gcc or clang not found)"
    )
    monkeypatch.setattr(gpu_speed.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert gpu_speed.compile_blocker(cuda, "inductor") is None
    monkeypatch.setenv("CXX", "")
    assert gpu_speed.compile_blocker(cpu, "inductor") is None
