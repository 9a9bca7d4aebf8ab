"""Models by Hub name (llmrun/hub.py, llmrun/store.py), against a local server that answers as
the Hub does (tests/hub_mock.py; the real Hub cannot be reached from these machines): name forms,
the choice of file, split GGUFs and sharded checkpoints, a dropped connection resumed, a corrupt
byte caught, every failure in one line, a second run without the network, list / rm."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

pytest.importorskip("gguf", reason="the gguf package (a test extra) writes the tiny GGUFs")

from conftest import make_hf_checkpoint, run_cli
from hub_mock import GOOD_TOKEN, MockHub
from test_gguf import TYPE_MIXES, write_tiny_gguf

from llmrun import hub
from llmrun.errors import LlmrunError


def _gguf(tmp, name, mix="llama-q4k", seed=0, split=0) -> dict[str, bytes]:
    """A tiny GGUF as the files a repository holds (split: gguf-split's parts)."""
    folder = tmp / f"{name}-{seed}"
    folder.mkdir()
    write_tiny_gguf(folder / name, *TYPE_MIXES[mix], seed=seed, split_max_tensors=split)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def mock_hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repos")
    ckpt = tmp / "ckpt"
    make_hf_checkpoint(ckpt, shards=2)
    with MockHub() as h:
        h.add_repo("org/tiny-GGUF", {**_gguf(tmp, "tiny-Q4_K_M.gguf"),
                                     **_gguf(tmp, "tiny-Q8_0.gguf", "llama-runnable", seed=1),
                                     "tiny-IQ3_M.gguf": b"GGUF not really", "README.md": b"# tiny\n"})
        h.add_repo("org/other-GGUF", {**_gguf(tmp, "other-Q5_K_M.gguf", "llama-q5", seed=2),
                                      **_gguf(tmp, "other-Q8_0.gguf", "llama-runnable", seed=3),
                                      "other-IQ3_M.gguf": b"GGUF not really"})
        h.add_repo("org/split-GGUF", _gguf(tmp, "split-Q4_K_M.gguf", seed=4, split=8))
        h.add_repo("org/iq-GGUF", {**_gguf(tmp, "iq-IQ4_XS.gguf", "llama-iq4xs", seed=7),
                                   "iq-IQ3_M.gguf": b"GGUF not really"})
        h.add_repo("org/tiny-ckpt", {p.name: p.read_bytes() for p in ckpt.iterdir()} | {"README.md": b"# ckpt\n"})
        h.add_repo("org/gated-GGUF", _gguf(tmp, "gated-Q4_K_M.gguf", seed=5), gated=True)
        h.add_repo("org/private-GGUF", _gguf(tmp, "private-Q4_K_M.gguf", seed=6), private=True)
        h.ckpt = ckpt
        yield h


def _lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


def _error(r) -> str:
    """The one error line of a failed run."""
    lines = _lines(r)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith("llmrun: error: "), r.stderr
    return lines[-1].removeprefix("llmrun: error: ")


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def _pull(hub_, env, name):
    r = run_cli("pull", name, env=env)
    assert r.returncode == 0, r.stderr
    return r


# --- names -----------------------------------------------------------------------------------

def test_name_forms(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    N = hub.HubName
    assert hub.parse("org/repo") == N("org/repo")
    assert hub.parse("org/repo:q4_k_m") == N("org/repo", "q4_k_m")
    assert hub.parse("org/repo@v1.0") == N("org/repo", None, "v1.0")
    assert hub.parse("org/repo@v1.0:Q8_0") == N("org/repo", "Q8_0", "v1.0")
    # addresses: the configured endpoint's host, and every host the library counts as the Hub
    # (its short alias among them), with or without the scheme
    hosts = ["127.0.0.1:9", *huggingface_hub.constants.HF_URL_HOSTS]
    assert len(hosts) >= 3
    for host in hosts:
        for scheme in ("", "https://"):
            assert hub.parse(f"{scheme}{host}/org/repo") == N("org/repo"), host
            assert hub.parse(f"{scheme}{host}/org/repo:Q8_0") == N("org/repo", "Q8_0"), host
    assert hub.parse("http://127.0.0.1:9/org/repo/tree/v2") == N("org/repo", None, "v2")
    assert hub.parse("http://127.0.0.1:9/org/repo/blob/main/m-Q8_0.gguf") == N("org/repo", None, "main", "m-Q8_0.gguf")
    # not names: paths (missing ones say so when opened), files, deeper paths
    for text in ("model.gguf", "dir/model.gguf", "dir/model.llmr", "a/b/c", "./a/b", "/a/b", "smollm2-135m-instruct"):
        assert hub.parse(text) is None or text == "smollm2-135m-instruct", text
    with pytest.raises(LlmrunError, match="not the address of a model on http://127.0.0.1:9"):
        hub.parse("https://example.org/org/repo")
    with pytest.raises(LlmrunError, match="a dataset, not a model"):
        hub.parse("http://127.0.0.1:9/datasets/org/data")
    # a folder of that name here is a checkpoint folder, not a Hub name
    from llmrun import store
    (tmp_path / "org" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert store.hub_name("org/repo") is None and store.hub_name("org/other") == N("org/other")


def test_quant_names_and_bits():
    assert hub.quant_of("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert hub.quant_of("model.q8_0.gguf") == "Q8_0"
    assert hub.quant_of("Qwen3-4B-UD-Q4_K_XL.gguf") == "Q4_K_XL"
    assert hub.quant_of("Phi-3.5-mini-instruct-IQ4_XS.gguf") == "IQ4_XS"
    assert hub.quant_of("gemma-3-1b-it-BF16.gguf") == "BF16"
    assert hub.bits("Q8_0") == 8.5 and hub.bits("q4_k_m") == 4.5 and hub.bits("Q4_K_S") < 4.5 < hub.bits("Q4_K_L")
    assert hub.bits("IQ3_M") is None and hub.bits("Q4_K_XL") is None
    assert hub.bits("IQ4_XS") == 4.25 and hub.bits("iq4_nl") == 4.5  # IQ4_XS: re-stored as IQ4_NL
    files = [hub.RemoteFile(n, 1) for n in ("m-Q8_0.gguf", "sub/m-Q2_K-00002-of-00002.gguf",
                                            "sub/m-Q2_K-00001-of-00002.gguf", "mmproj-m-f16.gguf", "README.md")]
    quants = hub.gguf_quants(files)
    assert {q: [f.name for f in fs] for q, fs in quants.items()} == {
        "Q2_K": ["sub/m-Q2_K-00001-of-00002.gguf", "sub/m-Q2_K-00002-of-00002.gguf"], "Q8_0": ["m-Q8_0.gguf"]}


# --- fetching, as the library asks ------------------------------------------------------------

def test_gguf_repo_default_quant_then_offline(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    before = len(mock_hub.requests)
    r = _pull(mock_hub, env, "org/tiny-GGUF")
    assert re.search(r"org/tiny-GGUF: Q4_K_M \(tiny-Q4_K_M\.gguf, [\d.]+ KiB\), the default", r.stderr), r.stderr
    path = r.stdout.strip()
    assert path.startswith(env["LLMRUN_HOME"]) and path.endswith(".llmr")
    commit = mock_hub.repos["org/tiny-GGUF"].commit
    asked = [(q.method, q.path, q.query, q.host) for q in mock_hub.requests[before:]]
    # what the library really asks: the model's info with its files' hashes, the file's metadata
    # at the commit (answered by a redirect to storage on another host), then the bytes there
    sha = hashlib.sha256(mock_hub.repos["org/tiny-GGUF"].files["tiny-Q4_K_M.gguf"]).hexdigest()
    assert asked == [("GET", "/api/models/org/tiny-GGUF", "blobs=true", "127.0.0.1"),
                     ("HEAD", f"/org/tiny-GGUF/resolve/{commit}/tiny-Q4_K_M.gguf", "", "127.0.0.1"),
                     ("GET", f"/cdn/{sha}", "", "localhost")], asked

    # the second run: no network at all (an endpoint where nothing listens), and offline mode
    n = len(mock_hub.requests)
    for extra in ({"HF_ENDPOINT": _dead_endpoint()}, {"HF_HUB_OFFLINE": "1"}):
        r = run_cli("generate", "org/tiny-GGUF", "-p", "hello", "-n", "4", "--raw", "--temp", "0", env={**env, **extra})
        assert r.returncode == 0 and "converting" not in r.stderr and "Q4_K_M" not in r.stderr, r.stderr
    assert len(mock_hub.requests) == n
    # the Python API takes the same names
    code = "import llmrun; m = llmrun.load('org/tiny-GGUF'); print(m.file.path)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert r.stdout.strip() == path, r.stderr


def test_a_conversion_by_an_earlier_llmrun_is_kept_until_pulled_again(mock_hub, tmp_path):
    """A Hub name converted by an llmrun that wrote other types or layouts (store.format_key)
    still loads, offline, saying that `llmrun pull` converts it again; the pull does, and removes
    the earlier conversion."""
    import json
    from pathlib import Path
    env = mock_hub.env(tmp_path)
    path = Path(_pull(mock_hub, env, "org/tiny-GGUF").stdout.strip())
    old = path.with_name(path.name.rsplit("-", 1)[0] + ".llmr")  # <quant>-<commit>.llmr: before format keys
    path.rename(old)
    [entry_file] = path.parent.glob("*.json")
    entry_file.write_text(json.dumps({**json.loads(entry_file.read_text()), "llmr": old.name}))
    r = run_cli("generate", "org/tiny-GGUF", "-p", "hi", "-n", "2", "--raw", "--temp", "0",
                env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert ("org/tiny-GGUF was converted by another llmrun version; `llmrun pull org/tiny-GGUF` converts it "
            "again for this one") in r.stderr, r.stderr
    listed = run_cli("list", env=env, check=True)
    assert listed.stdout.splitlines()[1].split()[0] == "org/tiny-GGUF*", listed.stdout
    assert listed.stderr.startswith("* converted by another llmrun version ("), listed.stderr
    r = _pull(mock_hub, env, "org/tiny-GGUF")
    assert r.stdout.strip() == str(path) and path.exists() and not old.exists(), r.stderr
    listed = run_cli("list", env=env, check=True)
    assert listed.stdout.splitlines()[1].split()[0] == "org/tiny-GGUF" and "another llmrun" not in listed.stderr
    r = run_cli("generate", "org/tiny-GGUF", "-p", "hi", "-n", "2", "--raw", "--temp", "0", env=env)
    assert r.returncode == 0 and "another llmrun" not in r.stderr, r.stderr


def test_tags_choose_the_file(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    r = _pull(mock_hub, env, "org/tiny-GGUF:q8_0")  # any case
    assert "org/tiny-GGUF:q8_0: Q8_0 (tiny-Q8_0.gguf, 1.9 MiB), as asked" in r.stderr
    r = _pull(mock_hub, env, "org/other-GGUF")
    assert ("org/other-GGUF: Q5_K_M (other-Q5_K_M.gguf, 881.4 KiB), the closest to Q4_K_M in bits per weight "
            "(5.5 against 4.5; the repository has no Q4_K_M)") in r.stderr, r.stderr
    assert _error(run_cli("pull", "org/tiny-GGUF:Q3_K_S", env=env)) == (
        "org/tiny-GGUF has no Q3_K_S file; it has: IQ3_M (15 B, not readable by llmrun), "
        "Q4_K_M (735.4 KiB), Q8_0 (1.9 MiB)")
    assert _error(run_cli("pull", "org/tiny-GGUF:iq3_m", env=env)).startswith(
        "org/tiny-GGUF: IQ3_M files are not readable by llmrun yet")
    page = f"{mock_hub.url}/org/other-GGUF/blob/main/other-Q8_0.gguf"
    r = _pull(mock_hub, env, page)
    assert "other-Q8_0.gguf, as named" in r.stderr, r.stderr


def test_split_gguf_repo(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    r = _pull(mock_hub, env, "org/split-GGUF")
    assert "Q4_K_M (split-Q4_K_M-00001-of-00003.gguf and 2 more parts" in r.stderr, r.stderr
    for i in (1, 2, 3):
        assert mock_hub.file_requests(f"split-Q4_K_M-0000{i}-of-00003.gguf")
    r = run_cli("generate", "org/split-GGUF", "-p", "hi", "-n", "2", "--raw", "--temp", "0", env=env)
    assert r.returncode == 0, r.stderr


def test_an_iq4_xs_repo_pulls_and_runs(mock_hub, tmp_path):
    """A repository of IQ4_XS (and an unreadable IQ3_M): the IQ4_XS file is the one chosen, its
    tensors run as iq4_nl."""
    env = mock_hub.env(tmp_path)
    r = _pull(mock_hub, env, "org/iq-GGUF")
    assert "org/iq-GGUF: IQ4_XS (iq-IQ4_XS.gguf" in r.stderr, r.stderr
    r = run_cli("info", "org/iq-GGUF", env=env, check=True)
    assert "iq4_xs->iq4_nl" in r.stdout, r.stdout
    r = run_cli("generate", "org/iq-GGUF", "-p", "hi", "-n", "2", "--raw", "--temp", "0", env=env)
    assert r.returncode == 0, r.stderr


def test_checkpoint_repo_sharded_and_typed(mock_hub, tmp_path):
    """A safetensors repository: config, tokenizer, the index and the shards it names (not the
    README), converted to the tag's type, exactly as the same folder converts locally."""
    env = mock_hub.env(tmp_path)
    before = len(mock_hub.requests)
    r = _pull(mock_hub, env, "org/tiny-ckpt:q8_0")
    assert "org/tiny-ckpt:q8_0: a safetensors checkpoint, converted to q8_0" in r.stderr, r.stderr
    fetched = {q.path.rsplit("/", 1)[-1] for q in mock_hub.requests[before:] if q.method == "HEAD"}
    assert fetched == {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
                       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}, fetched
    from llmrun.format import LlmrFile
    from llmrun.models import convert
    convert(str(mock_hub.ckpt), str(tmp_path / "local.llmr"), "q8_0")
    a, b = LlmrFile(r.stdout.strip()), LlmrFile(str(tmp_path / "local.llmr"))
    assert a.tensors.keys() == b.tensors.keys()
    assert all(bytes(a.tensor(n).data) == bytes(b.tensor(n).data) for n in a.tensors)
    assert _error(run_cli("pull", "org/tiny-ckpt:q9_9", env=env)).startswith(
        "org/tiny-ckpt:q9_9: a safetensors checkpoint, converted to the tag's type: unknown tensor type 'q9_9'")


def test_dropped_connection_resumes(mock_hub, tmp_path):
    """The connection drops 1.5 MiB into the file: the library asks for the rest by a Range
    request (from the last whole chunk), so the bytes come once, but for part of one chunk."""
    env = mock_hub.env(tmp_path)
    name = "tiny-Q8_0.gguf"
    size = len(mock_hub.repos["org/tiny-GGUF"].files[name])
    mock_hub.bytes_sent.pop(name, None)
    mock_hub.drop_once[name] = 3 << 19
    _pull(mock_hub, env, "org/tiny-GGUF:Q8_0")
    gets = [q for q in mock_hub.requests if q.path.startswith("/cdn/")][-2:]
    assert gets[0].range is None and gets[1].range == f"bytes={hub.CHUNK}-", gets
    assert size < mock_hub.bytes_sent[name] < size + hub.CHUNK
    assert not any(q.auth for q in mock_hub.requests if q.host == "localhost")  # no token sent off the Hub


def test_corrupt_byte_is_caught(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    name = "tiny-Q8_0.gguf"
    mock_hub.corrupt[name] = True
    try:
        line = _error(run_cli("pull", "org/tiny-GGUF:Q8_0", env=env))
    finally:
        mock_hub.corrupt[name] = False
    sha = hashlib.sha256(mock_hub.repos["org/tiny-GGUF"].files[name]).hexdigest()
    assert re.fullmatch(rf"org/tiny-GGUF: {name} arrived corrupt \(sha256 [0-9a-f]{{12}}\.\.\., the Hub publishes "
                        rf"{sha[:12]}\.\.\.\); deleted it: run again to download it afresh", line), line
    assert not list((tmp_path / "llmrun-home").rglob("*.llmr"))  # nothing converted from it
    assert not [p for p in (tmp_path / "hf-cache").rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    _pull(mock_hub, env, "org/tiny-GGUF:Q8_0")  # and the next run fetches it whole


def test_every_failure_is_one_line(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    url = mock_hub.url
    gated = f"org/gated-GGUF is gated: accept the license at {url}/org/gated-GGUF, then set HF_TOKEN"
    assert _error(run_cli("pull", "org/gated-GGUF", env=env)) == gated
    assert mock_hub.requests[-1].method == "HEAD"  # listed (public), then refused at the file: 401
    assert _error(run_cli("chat", "org/gated-GGUF", env={**env, "HF_TOKEN": "hf_not_accepted"})) == (
        f"org/gated-GGUF is gated and the account of your HF_TOKEN has no access yet: accept the license at "
        f"{url}/org/gated-GGUF with that account, then try again")
    _pull(mock_hub, mock_hub.env(tmp_path, token=GOOD_TOKEN), "org/gated-GGUF")
    assert mock_hub.requests[-2].auth  # the token went to the Hub
    assert _error(run_cli("pull", "org/private-GGUF", env=env)) == (
        f"org/private-GGUF: no such model on {url} (or it is private: set HF_TOKEN); and no file or folder "
        "of that name here")
    assert _error(run_cli("info", "org/no-such-repo", env={**env, "HF_TOKEN": "hf_x"})) == (
        f"org/no-such-repo: no such model on {url} (or your HF_TOKEN cannot see it); and no file or folder "
        "of that name here")
    assert _error(run_cli("pull", "org/tiny-GGUF@nope", env=env)) == "org/tiny-GGUF has no revision 'nope'"
    assert _error(run_cli("pull", "org/tiny-GGUF", env={**env, "HF_HUB_OFFLINE": "1"})) == (
        "org/tiny-GGUF is not downloaded and HF_HUB_OFFLINE is set: unset it to download it "
        "(`llmrun list` shows what is here)")
    dead = _dead_endpoint()
    line = _error(run_cli("generate", "org/tiny-GGUF", "-p", "hi", env={**env, "HF_ENDPOINT": dead}))
    assert re.fullmatch(rf"cannot reach {dead} to fetch org/tiny-GGUF \(.+\), and it is not in the cache: "
                        r"connect to the network and run again \(`llmrun list` shows what is here\)", line), line
    assert [p.parent.name for p in tmp_path.rglob("*.llmr")] == ["gated-GGUF"]  # the one pulled with the token


def _unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (a private mount of a tiny tmpfs)")
def test_disk_full_is_one_line(mock_hub, tmp_path):
    """The download cache on a 256 KiB file system: refused before any byte is written; and, with
    the check fooled, the write that fails mid-file."""
    env = mock_hub.env(tmp_path)
    cache = env["HF_HUB_CACHE"]
    os.makedirs(cache)
    cli = "from llmrun.cli.main import main; main()"
    fooled = "import shutil, collections; shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(1 << 40, 0, 1 << 40); " + cli
    for code in (cli, fooled):
        r = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=256k tmpfs "$HF_HUB_CACHE" && '
                            f'exec "$0" -c "$1" pull org/tiny-GGUF', sys.executable, code],
                           capture_output=True, text=True, env={**os.environ, **env})
        line = _error(r)
        assert re.fullmatch(r"no space left for org/tiny-GGUF( \([\d.]+ [KM]iB needed, [\d.]+ KiB free\))? in "
                            rf"{re.escape(cache)}: free some space, or point HF_HUB_CACHE and LLMRUN_HOME at a "
                            r"larger disk", line), line
        assert ("needed" in line) == (code == cli)
    assert not list(tmp_path.rglob("*.llmr"))


# --- the cache -------------------------------------------------------------------------------

def test_list_and_rm(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    _pull(mock_hub, env, "org/tiny-GGUF")
    q8 = _pull(mock_hub, env, "org/tiny-GGUF:Q8_0").stdout.strip()
    _pull(mock_hub, env, "org/tiny-ckpt:q4_0")
    listed = run_cli("list", env=env, check=True).stdout.splitlines()
    assert listed[0].split() == ["NAME", "QUANT", "SIZE", "LAST", "USED", "PATH"]
    rows = {line.split()[0]: line for line in listed[1:]}
    assert set(rows) == {"org/tiny-GGUF", "org/tiny-GGUF:Q8_0", "org/tiny-ckpt:q4_0"}, listed
    assert re.search(r"Q8_0\s+[\d.]+ MiB\s+just now\s+" + re.escape(q8), rows["org/tiny-GGUF:Q8_0"])
    assert " q4_0 " in rows["org/tiny-ckpt:q4_0"] and " Q4_K_M " in rows["org/tiny-GGUF"]

    blobs = tmp_path / "hf-cache" / "models--org--tiny-GGUF" / "blobs"
    assert len(list(blobs.iterdir())) == 2
    r = run_cli("rm", "org/tiny-GGUF:q8_0", env=env, check=True)
    assert q8 in r.stdout and not os.path.exists(q8)
    assert len(list(blobs.iterdir())) == 1  # its download went too; the Q4_K_M one stays
    assert [line.split()[0] for line in run_cli("list", env=env).stdout.splitlines()[1:]] == [
        "org/tiny-GGUF", "org/tiny-ckpt:q4_0"]
    run_cli("rm", "org/tiny-ckpt", env=env, check=True)  # no tag: every entry of the repository
    assert not list((tmp_path / "hf-cache" / "models--org--tiny-ckpt" / "blobs").iterdir())
    assert _error(run_cli("rm", "org/tiny-ckpt", env=env)) == "org/tiny-ckpt is not in the cache (`llmrun list` shows what is)"

    r = run_cli("list", "--remote", "org/tiny-GGUF", env=env, check=True)
    out = r.stdout.splitlines()
    assert out[0].startswith("org/tiny-GGUF at ") and out[1].split() == ["QUANT", "SIZE", "BITS/WEIGHT", "FILE"]
    assert [line.split()[0] for line in out[2:]] == ["IQ3_M", "Q4_K_M", "Q8_0"]
    assert "Q4_K_M (default)  735.4 KiB  4.50" in out[3] and "not readable by llmrun" in out[2]
    r = run_cli("list", "--remote", "org/tiny-ckpt", env=env, check=True)
    assert "a safetensors checkpoint" in r.stdout and "in 2 files" in r.stdout


def test_offline_converts_what_the_library_cached(mock_hub, tmp_path):
    """Files in huggingface_hub's cache (an earlier download, or another tool's) convert without
    the network when llmrun has no model made of them."""
    env = mock_hub.env(tmp_path)
    path = _pull(mock_hub, env, "org/tiny-GGUF").stdout.strip()
    shutil.rmtree(tmp_path / "llmrun-home")
    n = len(mock_hub.requests)
    r = run_cli("pull", "org/tiny-GGUF", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and r.stdout.strip() == path, r.stderr
    assert "Q4_K_M (tiny-Q4_K_M.gguf" in r.stderr and len(mock_hub.requests) == n


def test_convert_and_quantize_take_names(mock_hub, tmp_path):
    env = mock_hub.env(tmp_path)
    r = run_cli("convert", "org/tiny-ckpt", tmp_path / "c.llmr", "--type", "q4_0", env=env)
    assert r.returncode == 0 and "wrote" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "llmrun.cli.main", "quantize", "org/tiny-GGUF:Q8_0", "--type", "q4_0",
                        "--allow-requantize"],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env})
    assert r.returncode == 0 and (tmp_path / "tiny-GGUF-q4_0.llmr").exists(), r.stderr
