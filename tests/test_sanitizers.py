"""The kernels under AddressSanitizer + UndefinedBehaviorSanitizer: the extension built with
-DLLMRUN_SANITIZE=ON (CMakeLists.txt), then the kernel, format and forward-pass tests and a
bounded fuzz run of the .llmr target on that build. Any report aborts the process, so zero
reports is a pass.

Python itself is not built with ASan, so its runtime is preloaded (LD_PRELOAD) and leak
detection is off (the interpreter keeps memory to the end by design). Only our extension is
instrumented: the libraries it sits beside (numpy, sentencepiece, tokenizers) run as they are.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

SUITES = ["tests/test_kernels.py", "tests/test_isa.py", "tests/test_format.py", "tests/test_tiny_models.py",
          "tests/test_threads.py", "tests/test_batch.py", "tests/test_sampling.py", "tests/test_kv_cache.py"]


def _runtime(name: str) -> str | None:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """(environment, path of the built extension)."""
    if sys.platform != "linux" or not shutil.which("gcc") or not shutil.which("cmake"):
        pytest.skip("the sanitizer build is set up for Linux with gcc and cmake")
    asan = _runtime("libasan.so")
    assert asan, "gcc has no libasan.so (Debian: libgcc-12-dev)"
    build = tmp_path_factory.mktemp("asan-build")
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DLLMRUN_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Release",
                    f"-DPython_EXECUTABLE={sys.executable}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True, capture_output=True)
    so = next(build.glob(f"_kernels*{sysconfig.get_config_var('EXT_SUFFIX')}"))
    # libstdc++ preloaded too: ASan intercepts C++ throws, and a C++ library that throws
    # (sentencepiece, on a bad model) would otherwise find the interceptor unresolved.
    preload = " ".join(p for p in (asan, _runtime("libstdc++.so")) if p)
    env = {**os.environ, "LD_PRELOAD": preload, "LLMRUN_KERNELS_PATH": str(so),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:verify_asan_link_order=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    return env, so


def test_the_sanitized_build_is_the_one_loaded(sanitized):
    env, so = sanitized
    r = subprocess.run([sys.executable, "-c", "import llmrun._kernels as k; print(k.__file__)"], env=env,
                       capture_output=True, text=True, check=True)
    assert Path(r.stdout.strip()) == so
    assert "__asan_init" in subprocess.run(["nm", "-D", str(so)], capture_output=True, text=True).stdout


@pytest.mark.parametrize("suite", SUITES)
def test_suite_under_sanitizers(sanitized, suite):
    env, _ = sanitized
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", suite],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    report = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if "Sanitizer" in line or "runtime error" in line)
    assert r.returncode == 0 and not report, f"{suite} (exit {r.returncode}):\n{report}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"


def test_llmr_fuzz_target_under_sanitizers(sanitized):
    env, _ = sanitized
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "run.py"), "llmr", "--mutate", "--seconds", "10"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Sanitizer" not in r.stderr, r.stderr[-4000:]
