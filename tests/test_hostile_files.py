"""Hostile pickles through the real `loracli convert`: every one exit 2, one sentence, nothing run, nothing written.

Each case is a few bytes built here: code-running globals, deep nesting (the nested-tuple dict key that
crashes the interpreter when hashed), memo indices and length prefixes that lie, storages larger than their
file, broken memos and cut-off streams, in every container the readers take: a plain .pkl (NVlabs/edm and
diffusion_lora snapshots), a torch zip .pt (training state, improved-diffusion), a legacy torch .pt and a
storage blob inside an EDM pickle. The cases that could crash the interpreter run in a subprocess, so a
crash shows as a negative exit code; the cases that lie about sizes are checked for the memory they take.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

DEEP = 20_000  # far beyond the bound and Python's recursion limit
CRASH_DEEP = 200_000  # hashing a tuple this deep overflows the C stack
MARKER = "loracli-payload-ran"


def q(n: int) -> bytes:
    return struct.pack("<Q", n)


def i4(n: int) -> bytes:
    return struct.pack("<I", n)


def text(s: str) -> bytes:
    data = s.encode()
    return b"X" + i4(len(data)) + data  # BINUNICODE


def glob(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def proto(n: int, body: bytes) -> bytes:
    return bytes([0x80, n]) + body + b"."


def payloads(marker: Path) -> dict[str, bytes]:
    """Streams that would create ``marker`` if any global they name were called."""
    shell = text(f"touch {marker}")
    code = text(f"open({str(marker)!r}, 'w').close()")
    return {
        "os.system": proto(2, glob("os", "system") + b"(" + shell + b"tR"),
        "posix.system": proto(2, glob("posix", "system") + shell + b"\x85R"),
        "builtins.exec": proto(2, glob("builtins", "exec") + code + b"\x85R"),
        "builtins.eval": proto(2, glob("builtins", "eval") + code + b"\x85R"),
        "builtins.open": proto(2, glob("builtins", "open") + text(str(marker)) + text("w") + b"\x86R"),
        "INST": proto(2, b"(" + shell + b"ios\nsystem\n"),
        "OBJ": proto(2, b"(" + glob("os", "system") + shell + b"o"),
        "STACK_GLOBAL": proto(4, b"\x8c\x02os\x8c\x06system\x93" + shell + b"\x85R"),
        "NEWOBJ": proto(2, glob("subprocess", "Popen") + b"]" + text("touch") + b"a" + text(str(marker))
                        + b"a\x85)\x81"),
        "BUILD setstate": proto(2, glob("collections", "OrderedDict") + b")R" + glob("os", "system") + b"b"),
        "nested in a dict": proto(2, b"}" + text("ema") + glob("os", "system") + shell + b"\x85Rs"),
        "EXT1": proto(2, b"\x82\x01"),
    }


def exhausting() -> dict[str, bytes]:
    """Streams built to exhaust or crash the reader (no global at all)."""
    return {
        "deep list": proto(2, b"]" * DEEP + b"a" * (DEEP - 1)),
        "deep dict": proto(2, (b"}" + text("k")) * DEEP + b"}" + b"s" * DEEP),
        "deep tuple": proto(2, b")" + b"\x85" * CRASH_DEEP),
        "deep MARK lists": proto(2, b"(" * DEEP + b"l" * DEEP),
        "memo self-reference": proto(2, b"]q\x00" + b"h\x00a" * DEEP),
        # dicts memoised empty, then linked d[k]["x"] = d[k+1]: each link looks shallow when it is made
        "memo chain of dicts": proto(2, b"".join(b"}r" + i4(k) + b"0" for k in range(DEEP))
                                     + b"".join(b"j" + i4(k) + text("x") + b"j" + i4(k + 1) + b"s0"
                                                for k in range(DEEP - 1)) + b"j" + i4(0)),
        "huge PUT": proto(2, b"Np99999999999999\n"),
        "huge LONG_BINPUT": proto(2, b"Nr\xff\xff\xff\xff"),
        "GET of nothing": proto(2, b"h\x05"),
        "huge LONG_BINGET": proto(2, b"j\xff\xff\xff\xff"),
        "BINBYTES8 lie": proto(4, b"\x8e" + q(1 << 60) + b"abc"),
        "BINUNICODE8 lie": proto(4, b"\x8d" + q(1 << 40) + b"abc"),
        "SHORT_BINBYTES lie": proto(3, b"C\xff" + b"ab"),
        "BINBYTES lie": proto(3, b"B" + i4(0xFFFFFFF0) + b"ab"),
        "BINUNICODE lie": proto(2, b"X" + i4(0xFFFFFFF0) + b"ab"),
        "LONG4 lie": proto(2, b"\x8b" + struct.pack("<i", 0x7FFFFFF0) + b"ab"),
        "BYTEARRAY8 lie": proto(5, b"\x96" + q(1 << 50) + b"ab"),
        "FRAME lie": proto(4, b"\x95" + q(1 << 50) + b"N"),
        "no STOP": b"\x80\x02" + text("ema"),
        "unknown opcode": proto(2, b"\xff"),
        "stack underflow": proto(2, b"a"),
        "persistent id in a plain pickle": proto(2, text("x") + b"Q"),
    }


def nested_tuple_key() -> bytes:
    """A dict whose key is a tuple nested DEEP times: hashing it overflows the C stack."""
    return proto(2, b"}" + b")" + b"\x85" * CRASH_DEEP + b"K\x01s")


# ----------------------------------------------------------------------------------------------------------
# Containers: how each stream reaches a reader.


def torch_zip(pkl: bytes, records: dict[str, bytes] | None = None, marker: bool = True,
              compress: int = zipfile.ZIP_STORED) -> bytes:
    """A torch zip archive holding ``pkl`` as its data.pkl (with EDM's persistence marker, so that the EDM
    reader takes it, unless ``marker`` is False: then the improved-diffusion reader does)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", pkl + (b"torch_utils.persistence" if marker else b""))
        z.writestr("archive/byteorder", b"little")
        for name, data in (records or {}).items():
            z.writestr(f"archive/data/{name}", data)
        z.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def legacy(obj_pickle: bytes, keys: bytes = proto(2, b"]"), tail: bytes = b"") -> bytes:
    """A legacy torch.save stream: magic, protocol, system info, ``obj_pickle``, storage keys, storages."""
    head = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))
    return head + obj_pickle + keys + tail


def storage_pid(numel: int, dtype: str = "FloatStorage", key: str = "0", legacy_form: bool = False) -> bytes:
    fields = text("storage") + glob("torch", dtype) + text(key) + text("cpu") + b"\x8a\x08" + struct.pack("<q", numel)
    return b"(" + fields + (b"N" if legacy_form else b"") + b"tQ"


def tensor_of(pid: bytes, size: int) -> bytes:
    """``_rebuild_tensor_v2(storage, 0, (size,), (1,), False, OrderedDict())``."""
    return (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"K\x00" + b"\x8a\x08" + struct.pack("<q", size)
            + b"\x85K\x01\x85\x89" + glob("collections", "OrderedDict") + b")Rt" + b"R")


def edm_with_blob(blob: bytes) -> bytes:
    """An EDM pickle whose tensor storage is ``blob`` (what torch.storage._load_from_bytes decodes)."""
    return proto(2, b"}" + text("ema") + glob("torch.storage", "_load_from_bytes")
                 + b"B" + i4(len(blob)) + blob + b"\x85Rs")


def cases(marker: Path) -> dict[str, tuple[str, bytes]]:
    """``{case: (file name, bytes)}``: every hostile stream in every container."""
    out: dict[str, tuple[str, bytes]] = {}
    streams = {**payloads(marker), **exhausting(), "nested tuple key": nested_tuple_key()}
    for name, stream in streams.items():
        out[f"pkl: {name}"] = ("network-snapshot.pkl", stream)
    lora_marker = text("training.lora") + text("LoraInjectedConv") + b"00"  # diffusion_lora's detection
    for name in ("os.system", "STACK_GLOBAL", "deep dict", "nested tuple key", "huge LONG_BINPUT"):
        stream = streams[name]
        out[f"diffusion_lora pkl: {name}"] = ("lora.pkl", stream[:2] + lora_marker + stream[2:])
    for name in ("os.system", "builtins.exec", "OBJ", "nested tuple key", "deep list", "huge LONG_BINPUT",
                 "GET of nothing", "BINBYTES8 lie", "no STOP"):
        out[f"zip pt (EDM): {name}"] = ("training-state.pt", torch_zip(streams[name]))
        out[f"zip pt (iddpm): {name}"] = ("model.pt", torch_zip(streams[name], marker=False))
    for name in ("os.system", "nested tuple key", "deep tuple", "huge LONG_BINPUT", "BINUNICODE8 lie"):
        out[f"legacy pt: {name}"] = ("ema_0.9999_000001.pt", legacy(streams[name]))
        out[f"EDM storage blob: {name}"] = ("blob.pkl", edm_with_blob(legacy(streams[name])))
    huge = 1 << 40
    out["zip pt: storage declares 4 TiB"] = ("model.pt", torch_zip(proto(2, tensor_of(storage_pid(huge), huge)),
                                                                     {"0": b"\0" * 16}, marker=False))
    out["zip pt: tensor larger than its storage"] = ("model.pt", torch_zip(proto(2, tensor_of(storage_pid(4), huge)),
                                                                            {"0": b"\0" * 16}, marker=False))
    out["zip pt: storage without a record"] = ("model.pt", torch_zip(proto(2, tensor_of(storage_pid(4), 4)),
                                                                      marker=False))
    out["zip pt: compressed record bomb"] = ("model.pt", torch_zip(proto(2, tensor_of(storage_pid(1 << 20), 4)),
                                                                    {"0": b"\0" * (4 << 20)}, marker=False,
                                                                    compress=zipfile.ZIP_DEFLATED))
    lora_pkl = proto(2, lora_marker + b"0N") + b"\0" * (64 << 20)  # inflates to 64 MiB if anything opens it
    out["zip pt: compressed data.pkl bomb"] = ("lora.pt", torch_zip(lora_pkl, compress=zipfile.ZIP_DEFLATED))
    out["zip pt: truncated"] = ("model.pt", torch_zip(proto(2, tensor_of(storage_pid(4), 4)), {"0": b"\0" * 16},
                                                      marker=False)[:-40])
    legacy_pid = storage_pid(huge, legacy_form=True)
    out["legacy pt: storage declares 4 TiB"] = ("model.pt", legacy(proto(2, tensor_of(legacy_pid, 4)),
                                                                   proto(2, b"]" + text("0") + b"a"),
                                                                   struct.pack("<q", huge) + b"\0" * 16))
    out["legacy pt: storage cut off"] = ("model.pt", legacy(proto(2, tensor_of(storage_pid(64, legacy_form=True), 4)),
                                                            proto(2, b"]" + text("0") + b"a"),
                                                            struct.pack("<q", 64) + b"\0" * 16))
    out["EDM storage blob: 4 TiB storage"] = ("blob.pkl", edm_with_blob(legacy(
        proto(2, legacy_pid), proto(2, b"]" + text("0") + b"a"), struct.pack("<q", huge) + b"\0" * 8)))
    return out


MARKER_PATH = Path(tempfile.mkdtemp(prefix="loracli-hostile-")) / MARKER  # what any payload would create
CASES = cases(MARKER_PATH)
CASE_NAMES = sorted(CASES)
SIZE_LIES = [n for n in CASE_NAMES if re.search(r"lie|huge|TiB|larger|bomb", n)]
CRASHERS = [n for n in CASE_NAMES if "nested tuple key" in n or n.endswith("deep tuple")]


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_growth_mib(run) -> tuple[object, float | None]:
    """``(run(), MiB the resident set peaked above where it started)``; None where Linux cannot tell."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
        before = _rss_kib("VmRSS")
    except OSError:
        return run(), None
    result = run()
    return result, (_rss_kib("VmHWM") - before) / 1024


def assert_refused(code: int, output: str, dst: Path) -> None:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 2, output
    assert 1 <= len(lines) <= 2 and "Traceback" not in output, output
    assert lines[0].startswith("Error:"), output
    assert not MARKER_PATH.exists(), "a payload ran"
    assert not dst.exists() and not list(dst.parent.glob(".*.tmp")), "an output file was written"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_pickle_is_refused_by_convert(name, tmp_path, cli):
    file_name, data = CASES[name]
    src, dst = tmp_path / file_name, tmp_path / "out" / "converted.safetensors"
    src.write_bytes(data)
    result, growth = peak_growth_mib(lambda: cli("convert", src, dst))
    assert_refused(result.exit_code, result.output, dst)
    if name in SIZE_LIES and growth is not None:
        assert growth < 50, f"{name}: the reader grew the process by {growth:.0f} MiB"


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}


def test_a_nested_tuple_key_ends_in_one_sentence_from_python_m_loracli(tmp_path):
    """The real entry point in its own interpreter: a crash would be a negative exit code."""
    file_name, data = CASES["pkl: nested tuple key"]
    src, dst = tmp_path / file_name, tmp_path / "converted.safetensors"
    src.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "loracli", "convert", str(src), str(dst)], capture_output=True,
                          text=True, env=_subprocess_env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 2, f"exit {done.returncode} (negative: the interpreter crashed): {done.stderr}"
    assert_refused(done.returncode, done.stderr + done.stdout, dst)


_DRIVER = """
import json, sys
from typer.testing import CliRunner
from loracli.cli.app import make_app
for src, dst in json.loads(sys.argv[1]):
    result = CliRunner().invoke(make_app(), ["convert", src, dst])
    print(json.dumps([src, result.exit_code, result.output]), flush=True)
"""


def test_interpreter_crashers_in_every_container_end_in_one_sentence_in_a_separate_process(tmp_path):
    """Every case that would overflow the C stack, run through the CLI in one child interpreter."""
    pairs = []
    for k, name in enumerate(CRASHERS):
        file_name, data = CASES[name]
        (tmp_path / str(k)).mkdir()
        src = tmp_path / str(k) / file_name
        src.write_bytes(data)
        pairs.append([str(src), str(tmp_path / str(k) / "converted.safetensors")])
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(pairs)], capture_output=True, text=True,
                          env=_subprocess_env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode} (negative: the interpreter crashed): {done.stderr[-2000:]}"
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(CRASHERS)
    for (src, code, output), (_, dst) in zip(results, pairs):
        assert_refused(code, output, Path(dst))


def test_the_suite_covers_at_least_thirty_hostile_pickles_in_every_container():
    assert len(CASE_NAMES) >= 30
    for container in ("pkl:", "diffusion_lora pkl:", "zip pt (EDM):", "zip pt (iddpm):", "legacy pt:",
                      "EDM storage blob:"):
        assert any(n.startswith(container) for n in CASE_NAMES), container


def test_a_deep_tuple_key_is_refused_before_unpickling():
    from loracli.io.convert.pickle_scan import UnsafePickle, scan

    with pytest.raises(UnsafePickle, match="nested more than"):
        scan(nested_tuple_key())


def test_a_real_legacy_torch_file_reads_back_equal():
    """A state dict saved by torch in its legacy format reads back equal through loracli's reader."""
    from loracli.io.convert.torch_archive import read_legacy

    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5), "nested": {"c": torch.ones(2, dtype=torch.float16)}}
    buffer = io.BytesIO()
    torch.save(sd, buffer, _use_new_zipfile_serialization=False)
    back = read_legacy(buffer.getvalue())
    assert torch.equal(back["a.weight"], sd["a.weight"]) and torch.equal(back["b"], sd["b"])
    assert back["nested"]["c"].dtype == torch.float16 and torch.equal(back["nested"]["c"], sd["nested"]["c"])


def test_real_zip_pt_reads_back_equal(tmp_path):
    from loracli.io.convert.torch_archive import read_zip

    sd = {"w": torch.randn(2, 3).t(), "v": torch.arange(6, dtype=torch.int64)[2:]}
    torch.save(sd, tmp_path / "x.pt")
    back = read_zip(tmp_path / "x.pt")
    assert torch.equal(back["w"], sd["w"]) and torch.equal(back["v"], sd["v"])
