"""Models by their Hub name, fetched with `huggingface_hub` (its cache, token, endpoint and
offline mode: HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE).

    org/repo                 a repository on the Hub the library is configured for
    org/repo:Q8_0            a GGUF repository's file, by its quantisation (any case); for a
                             safetensors repository, the type to convert to (q4_0, q8_0, ...)
    org/repo@REVISION        a branch, tag or commit (org/repo@REVISION:TAG with both)
    https://HOST/org/repo[/tree/REV | /blob/REV/FILE]   the page's address, with or without
                             the scheme: HOST is the configured endpoint's or the library's alias

A GGUF repository gives one file (or the parts of a split one): the tag's, else Q4_K_M, else the
runnable quantisation closest to it in bits per weight. A safetensors repository gives its
config, tokenizer, template and weights (sharded too), converted to the tag's type (default f16,
what `llmrun convert` makes of a checkpoint). Every file is checked against the hash the Hub
publishes (sha256 for LFS files, the git blob id for others) before it is used.

Every failure is an LlmrunError of one line: gated, private or missing repositories, unknown
revisions, no matching quantisation (with what the repository has), no network or offline mode
with nothing cached, a full disk, a corrupt download.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass

from .errors import LlmrunError

DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf and ollama pick when no tag is given
CHUNK = 1 << 20  # download chunk: a dropped connection resumes at most this far back
# what a checkpoint needs beside its weights (models/hf.py reads these)
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
                    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
INDEX = "model.safetensors.index.json"

_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TAG = re.compile(r"[A-Za-z0-9][\w.+-]*")
# a quantisation in a GGUF file name: Q4_K_M, q8_0, IQ4_XS, BF16, ... (the last one in the name)
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|T?Q\d_\d|BF16|F16|F32|MXFP4)(?![A-Za-z0-9])", re.I)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_FILE_SUFFIXES = (".gguf", ".llmr", ".safetensors", ".json", ".bin", ".model")


@dataclass(frozen=True)
class HubName:
    repo: str  # org/repo
    tag: str | None = None  # :TAG as given
    revision: str | None = None  # @REVISION; None: the default branch
    file: str | None = None  # a file an address pointed at

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "") + (f":{self.tag}" if self.tag else "")


def _hf():
    """huggingface_hub, quietly: its warnings and retries are ours to report, in one line."""
    import huggingface_hub
    import huggingface_hub.constants  # noqa: F401 (submodules: attributes of the package once imported)
    import huggingface_hub.errors  # noqa: F401
    from huggingface_hub.utils import disable_progress_bars, logging
    logging.set_verbosity_error()
    if not sys.stderr.isatty():
        disable_progress_bars()
    return huggingface_hub


def endpoint() -> str:
    return _hf().constants.ENDPOINT.rstrip("/")


def _hosts() -> set[str]:
    """Host names whose addresses name models: the configured endpoint's, and those the library
    itself counts as the Hub (its short alias among them)."""
    from urllib.parse import urlsplit
    hf = _hf()
    return {h.lower() for h in hf.constants.HF_URL_HOSTS} | {urlsplit(endpoint()).hostname or ""}


def parse(text: str) -> HubName | None:
    """The Hub name in `text`, or None when it is not one (a path, a release's name). An address
    on another host, or a malformed one, is an error: the user clearly meant a model."""
    rest, tag = text, None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:  # :TAG ends the name
        rest, _, tag = text.rpartition(":")
        if not _TAG.fullmatch(tag):
            return None
    lowered = rest.lower()
    has_scheme = lowered.startswith(("http://", "https://", "hf://"))
    if not has_scheme and lowered.split("/", 1)[0].split(":")[0] in _hosts():
        rest, has_scheme = "https://" + rest, True  # HOST/org/repo
    if not has_scheme:
        repo, _, revision = rest.partition("@")
        if not _REPO.fullmatch(repo) or repo.lower().endswith(_FILE_SUFFIXES) or "@" in revision:
            return None
        if not revision and "@" in rest:
            raise LlmrunError(f"{text}: an empty revision after @")
        return HubName(repo, tag, revision or None)
    hf = _hf()
    try:
        uri = hf.parse_hf_uri(rest, endpoint=endpoint())
    except hf.errors.HfUriError:
        raise LlmrunError(f"{text}: not the address of a model on {endpoint()} (org/repo, or its page: "
                          "/tree/REVISION, /blob/REVISION/FILE; HF_ENDPOINT names another Hub)") from None
    if uri.type != "model":
        raise LlmrunError(f"{text}: a {uri.type}, not a model")
    return HubName(uri.id, tag, uri.revision, uri.path_in_repo or None)


# --- what a repository holds ---------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteFile:
    name: str  # path in the repository
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git's sha1 of the blob, for the others


def quant_of(filename: str) -> str | None:
    """The quantisation a GGUF file's name says: 'Q4_K_M' for Llama-3.2-1B-Instruct-Q4_K_M.gguf."""
    found = _QUANT.findall(os.path.basename(filename).removesuffix(".gguf"))
    return found[-1].upper() if found else None


def bits(quant: str) -> float | None:
    """Bits per weight of a quantisation we can read (from the type table; _S / _M / _L mixes
    a little under / at / over their base type), None for those we cannot (IQ3_M, IQ2_XXS, TQ*, ...)."""
    from .quant.types import TABLE
    types = {t.name.upper(): t for t in TABLE}
    names = "|".join(sorted(map(re.escape, types), key=len, reverse=True))
    m = re.fullmatch(rf"({names})(?:_([SML]))?", quant.upper())
    if not m:
        return None
    return types[m[1]].bits_per_weight + {"S": -0.1, None: 0.0, "M": 0.0, "L": 0.1}[m[2]]


def gguf_quants(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """Quantisation -> the files of that model (a split one's parts in order), mmproj (vision
    projector) files left out."""
    out: dict[str, list[RemoteFile]] = {}
    for f in sorted(files, key=lambda f: f.name):
        base = os.path.basename(f.name)
        if not base.endswith(".gguf") or base.lower().startswith("mmproj"):
            continue
        m = _SPLIT.search(base)
        if m and int(m[1]) != 1 and any(g.name.endswith(f"-00001-of-{m[2]}.gguf") for g in files):
            continue  # a later part: added with the first
        stem = base[:m.start()] if m else base.removesuffix(".gguf")
        quant = quant_of(stem + ".gguf") or stem
        if quant in out:  # two models of one quantisation: each by its name
            quant = stem
        parts = [f]
        if m:
            stem = f.name[:-len(m[0])]
            parts = [g for i in range(1, int(m[2]) + 1) for g in files if g.name == f"{stem}-{i:05d}-of-{m[2]}.gguf"]
        out.setdefault(quant, []).extend(parts)
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def describe(quants: dict[str, list[RemoteFile]]) -> str:
    """'Q4_K_M (1.2 GiB), Q8_0 (2.0 GiB, 2 parts)' in order of size."""
    items = sorted(quants.items(), key=lambda kv: sum(f.size for f in kv[1]))
    return ", ".join(f"{q} ({_size(sum(f.size for f in fs))}{f', {len(fs)} parts' if len(fs) > 1 else ''}"
                     f"{'' if bits(q) else ', not readable by llmrun'})" for q, fs in items)


@dataclass
class Choice:
    """What to fetch for a name, and what to make of it."""
    kind: str  # "gguf" or "safetensors"
    quant: str  # the GGUF's quantisation, or the type a checkpoint is converted to
    files: list[RemoteFile]
    why: str  # said to the user
    convert_type: str | None = None  # for convert(): None keeps a GGUF's types
    main: str | None = None  # the GGUF file (first part) to convert; None: the checkpoint folder


def choose(name: HubName, files: list[RemoteFile]) -> Choice:
    quants = gguf_quants(files)
    if name.file:  # an address named the file
        quant = next((q for q, fs in quants.items() if fs[0].name == name.file), None)
        if quant is None:
            raise LlmrunError(f"{name.repo} has no GGUF model file {name.file!r} (a split file's first part); "
                              f"its GGUF files: {describe(quants) or 'none'}")
        return Choice("gguf", quant, quants[quant], f"{name.file}, as named", main=name.file)
    if quants:
        return _choose_gguf(name, quants)
    names = {f.name for f in files}
    if "config.json" in names and (INDEX in names or "model.safetensors" in names):
        return _choose_checkpoint(name, files)
    listed = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "")
    raise LlmrunError(f"{name.repo} has neither GGUF files nor a safetensors checkpoint (config.json and "
                      f"model.safetensors); it has: {listed or 'no files'}")


def _choose_gguf(name: HubName, quants: dict[str, list[RemoteFile]]) -> Choice:
    def pick(quant, why):
        files = quants[quant]
        return Choice("gguf", quant, files, f"{quant} ({files[0].name}{f' and {len(files) - 1} more parts' if len(files) > 1 else ''}, "
                      f"{_size(sum(f.size for f in files))}), {why}", main=files[0].name)

    if name.tag:
        match = next((q for q in quants if q.upper() == name.tag.upper()), None)
        if match is None:
            raise LlmrunError(f"{name.repo} has no {name.tag.upper()} file; it has: {describe(quants)}")
        if bits(match) is None:
            raise LlmrunError(f"{name.repo}: {match} files are not readable by llmrun yet (it reads F32, F16, BF16, "
                              f"Q8_0, Q5_x, Q4_x and the K-quants); it has: {describe(quants)}")
        return pick(match, "as asked")
    if DEFAULT_QUANT in quants:
        return pick(DEFAULT_QUANT, "the default")
    readable = [q for q in quants if bits(q) is not None]
    if not readable:
        raise LlmrunError(f"{name.repo} has no GGUF file llmrun can read; it has: {describe(quants)}")
    target = bits(DEFAULT_QUANT)
    best = min(readable, key=lambda q: (abs(bits(q) - target), -bits(q)))
    return pick(best, f"the closest to {DEFAULT_QUANT} in bits per weight ({bits(best):.2g} against {target:.2g}; "
                      f"the repository has no {DEFAULT_QUANT})")


def _choose_checkpoint(name: HubName, files: list[RemoteFile]) -> Choice:
    from .quant.policy import target
    type = (name.tag or "f16").lower()
    try:
        target(type)
    except ValueError as e:
        raise LlmrunError(f"{name}: a safetensors checkpoint, converted to the tag's type: {e}") from None
    wanted = [f for f in files if f.name in CHECKPOINT_FILES or f.name in (INDEX, "model.safetensors")]
    why = f"a safetensors checkpoint, converted to {type}" + ("" if name.tag else " (the default; :q8_0, :q4_0 ... choose)")
    return Choice("safetensors", type, wanted, why, convert_type=type)


# --- the library's calls, their errors in one line -------------------------------------------------

def _token_given() -> bool:
    return bool(_hf().get_token())


def _explain(e: BaseException, name: HubName, what: str) -> LlmrunError:
    """One line for anything the library raises."""
    hf = _hf()
    err = hf.errors
    page = f"{endpoint()}/{name.repo}"
    if isinstance(e, err.GatedRepoError):
        if _token_given():
            return LlmrunError(f"{name.repo} is gated and the account of your HF_TOKEN has no access yet: accept "
                               f"the license at {page} with that account, then try again")
        return LlmrunError(f"{name.repo} is gated: accept the license at {page}, then set HF_TOKEN")
    if isinstance(e, err.RepositoryNotFoundError):
        hint = "or your HF_TOKEN cannot see it" if _token_given() else "or it is private: set HF_TOKEN"
        return LlmrunError(f"{name.repo}: no such model on {endpoint()} ({hint}); "
                           "and no file or folder of that name here")
    if isinstance(e, err.RevisionNotFoundError):
        return LlmrunError(f"{name.repo} has no revision {name.revision!r}")
    if isinstance(e, err.OfflineModeIsEnabled) or hf.constants.HF_HUB_OFFLINE and isinstance(e, err.LocalEntryNotFoundError):
        return LlmrunError(f"{name} is not downloaded and HF_HUB_OFFLINE is set: unset it to download it "
                           "(`llmrun list` shows what is here)")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return _disk_full(name, what)
    if isinstance(e, (err.LocalEntryNotFoundError, ConnectionError, TimeoutError)) or type(e).__module__.startswith("httpx"):
        cause = e.__cause__ or e.__context__ or e
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return LlmrunError(f"cannot reach {endpoint()} to fetch {name} ({reason}), and it is not in the cache: "
                           "connect to the network and run again (`llmrun list` shows what is here)")
    if isinstance(e, err.HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        return LlmrunError(f"{endpoint()} answered {status} for {name}: {str(e).splitlines()[0]}")
    return LlmrunError(f"{what}: {e}")


def _disk_full(name, what: str, need: int | None = None, free: int | None = None) -> LlmrunError:
    amounts = f" ({_size(need)} needed, {_size(free)} free)" if need is not None else ""
    return LlmrunError(f"no space left for {name}{amounts} in {what}: free some space, or point HF_HUB_CACHE "
                       "and LLMRUN_HOME at a larger disk")


def list_files(name: HubName) -> tuple[str, list[RemoteFile]]:
    """(commit, files) of the repository at the name's revision."""
    hf = _hf()
    try:
        info = hf.HfApi(endpoint=endpoint()).model_info(name.repo, revision=name.revision, files_metadata=True)
    except Exception as e:
        raise _explain(e, name, "listing the repository") from None
    files = [RemoteFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None, s.blob_id)
             for s in info.siblings or []]
    return info.sha, files


def cached_files(name: HubName) -> tuple[str, list[RemoteFile]] | None:
    """(commit, files) of the name's revision as the library's cache holds it (what was
    downloaded: the revision's ref, or the newest snapshot), or None; for running without the
    network on what an earlier run, or another tool, fetched."""
    hf = _hf()
    try:
        repos = hf.scan_cache_dir(hf.constants.HF_HUB_CACHE).repos
    except (hf.errors.CacheNotFound, OSError):
        return None
    revisions = [r for repo in repos if repo.repo_type == "model" and repo.repo_id == name.repo for r in repo.revisions]
    if name.revision:
        revisions = [r for r in revisions if name.revision in r.refs or r.commit_hash.startswith(name.revision)]
    if not revisions:
        return None
    best = max(revisions, key=lambda r: ("main" in r.refs, r.last_modified))
    files = [RemoteFile(os.path.relpath(f.file_path, best.snapshot_path), f.size_on_disk) for f in best.files]
    return best.commit_hash, files


def _hash(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    if algorithm == "sha1":  # git's blob id
        h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _forget(path: str) -> None:
    """Drop a bad download from the library's cache (its snapshot link and the blob)."""
    blob = os.path.realpath(path)
    for p in {path, blob}:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def verify(name: HubName, f: RemoteFile, path: str) -> None:
    """The downloaded file's hash against the one the Hub publishes; a mismatch deletes it."""
    if f.sha256:
        want, got = f.sha256, _hash(path, "sha256")
    elif f.blob_id:
        want, got = f.blob_id, _hash(path, "sha1")
    else:
        return  # listed from the cache: checked when it was downloaded
    if got != want:
        _forget(path)
        kind = "sha256" if f.sha256 else "git blob id"
        raise LlmrunError(f"{name.repo}: {f.name} arrived corrupt ({kind} {got[:12]}..., the Hub publishes "
                          f"{want[:12]}...); deleted it: run again to download it afresh")


def _check_space(name: HubName, commit: str, files: list[RemoteFile], extra: int) -> None:
    """Enough room for the files not yet cached, and `extra` bytes (the converted model), before
    anything is written; a rough check (the library writes beside, then renames)."""
    hf = _hf()
    missing = sum(f.size for f in files if not isinstance(
        hf.try_to_load_from_cache(name.repo, f.name, revision=commit), str))
    cache = hf.constants.HF_HUB_CACHE
    os.makedirs(cache, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if missing + extra > free:
        raise _disk_full(name, cache, missing + extra, free)


def download(name: HubName, commit: str, files: list[RemoteFile], extra_space: int = 0) -> dict[str, str]:
    """Fetch `files` at `commit` into the library's cache (kept files are not fetched again),
    each checked against its published hash; returns name -> local path."""
    hf = _hf()
    hf.constants.DOWNLOAD_CHUNK_SIZE = CHUNK
    if not hf.constants.HF_HUB_OFFLINE:
        _check_space(name, commit, files, extra_space)
    paths = {}
    for f in files:
        try:
            paths[f.name] = hf.hf_hub_download(name.repo, f.name, revision=commit, endpoint=endpoint())
        except Exception as e:
            raise _explain(e, name, hf.constants.HF_HUB_CACHE) from None
        verify(name, f, paths[f.name])
    return paths


@dataclass
class Plan:
    """What a name comes to: the commit, the choice, and (after `fetch`) where its files are."""
    name: HubName
    commit: str
    choice: Choice

    def fetch(self, extra_space: int = 0) -> str:
        """Download (what the cache lacks) and check the files; the GGUF (first part) or the
        checkpoint folder to convert."""
        paths = download(self.name, self.commit, self.choice.files, extra_space)
        return paths[self.choice.main] if self.choice.kind == "gguf" else os.path.dirname(paths["config.json"])


def plan(name: HubName, say=None) -> Plan:
    """List the repository (or, without the network, what the cache holds of it) and choose;
    a checkpoint's index is fetched to learn its shards."""
    try:
        commit, files = list_files(name)
    except LlmrunError:
        cached = cached_files(name)
        if cached is None:
            raise
        commit, files = cached
    choice = choose(name, files)
    if choice.kind == "safetensors" and any(f.name == INDEX for f in choice.files):
        import json
        paths = download(name, commit, [f for f in choice.files if f.name == INDEX])
        try:
            with open(paths[INDEX], encoding="utf-8") as fh:
                shards = set(json.load(fh)["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LlmrunError(f"{name.repo}: {INDEX} is not a safetensors index ({e})") from None
        by_name = {f.name: f for f in files}
        absent = sorted(s for s in shards if s not in by_name)
        if absent:
            raise LlmrunError(f"{name.repo}: {INDEX} names shards the repository lacks: {', '.join(absent[:3])}")
        choice.files += [by_name[s] for s in sorted(shards)]
    if say:
        say(f"{name}: {choice.why}")
    return Plan(name, commit, choice)


def forget_downloads(repo: str, commit: str | None, filenames: list[str]) -> list[str]:
    """Delete these files of `repo` at `commit` from the library's cache (their snapshot links,
    and each blob no other snapshot links to); the paths removed."""
    hf = _hf()
    removed = []
    for fname in filenames:
        path = hf.try_to_load_from_cache(repo, fname, revision=commit) if commit else None
        if not isinstance(path, str):
            continue
        blob = os.path.realpath(path)
        snapshots = os.path.dirname(os.path.dirname(path[:-len(fname)] if path.endswith(fname) else path))
        os.unlink(path)
        removed.append(path)
        others = [os.path.join(d, f) for d, _, fs in os.walk(snapshots) for f in fs]
        if blob != path and os.path.exists(blob) and not any(os.path.realpath(o) == blob for o in others):
            os.unlink(blob)
            removed.append(blob)
    return removed
