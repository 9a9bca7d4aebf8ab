"""The arm64 NEON kernels (kernels/cpu/*_neon.c) against the scalar references, on any host.

tests/neon/test_neon.c is cross-compiled with aarch64-linux-gnu-gcc (static) together with the
NEON files and the scalar *_ref.c files they are held to, and run under qemu-aarch64 (natively
on an arm64 host). It checks the quantised dots (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k .. q6_k against
q16_a), q6_k's 4-token tile and the q16_a quantiser bit for bit against _ref (the tile against
the single-token dot), and the float dots (f32, f16, bf16) within
FLOAT_DOT_BOUND(K) = (K + 2) u sum|x w| of float64 (bounds derived in the C file). This tests
the kernels (attention too: attention_neon.c within the x86 SIMD kernels' bound of float64, an
f16 cache giving the widened f32 cache's result bit for bit), not the module's dispatch to them (that needs an arm64 build of the module).

Skipped, with the reason, when the cross compiler or qemu is missing (CI installs them:
gcc-aarch64-linux-gnu, qemu-user)."""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["tests/neon/test_neon.c", "kernels/cpu/vec_dot_quant_neon.c", "kernels/cpu/vec_dot_float_neon.c",
           "kernels/cpu/quants_neon.c", "kernels/cpu/gemm_x16_neon.c", "kernels/cpu/gemm_x16_q6_k_neon.c",
           "kernels/cpu/vec_dot_ref.c", "kernels/cpu/quants_ref.c",
           "kernels/cpu/types.c", "kernels/cpu/vec_dot_q5_k_neon.c", "kernels/cpu/gemm_x16_q5_k_neon.c",
           "kernels/cpu/vec_dot_q5_k_ref.c", "kernels/cpu/vec_dot_q3_k_neon.c", "kernels/cpu/vec_dot_q3_k_ref.c",
           "kernels/cpu/vec_dot_q2_k_neon.c", "kernels/cpu/vec_dot_q2_k_ref.c", "kernels/cpu/attention_neon.c"]
NATIVE = platform.machine().lower() in ("aarch64", "arm64")


def _tools():
    """(compiler, runner prefix) or a pytest.skip with the reason."""
    if NATIVE and shutil.which("cc"):
        return "cc", []
    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("aarch64-linux-gnu-gcc not found (apt-get install gcc-aarch64-linux-gnu)")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.skip("qemu-aarch64 not found (apt-get install qemu-user)")
    return cc, [qemu]


def test_neon_kernels_match_scalar(tmp_path):
    cc, runner = _tools()
    exe = tmp_path / "test_neon"
    # The module's flags that matter for the arithmetic: no FMA contraction (CMakeLists.txt).
    cmd = [cc, "-O2", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
           "-I", str(ROOT / "kernels/include"), *[str(ROOT / s) for s in SOURCES], "-lm", "-o", str(exe)]
    if runner:
        cmd.insert(1, "-static")  # qemu-user then needs no aarch64 sysroot
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"build failed:\n{' '.join(cmd)}\n{build.stderr}"
    run = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0 and summary.endswith(" 0 failed"), f"{run.stdout}\n{run.stderr}"
    passed = int(summary.split()[0])
    assert passed > 1000, summary  # every case ran
