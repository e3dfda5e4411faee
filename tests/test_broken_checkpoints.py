"""Broken and hostile .safetensors checkpoints through the real CLI: exit 2, one sentence, nothing written.

Each case edits a real checkpoint of a tiny network: its header (every field of the tensor table, the
metadata, the build config), its bytes (cut, padded), its values (NaN, Inf, a dtype relabelled) or its
config (an absurd network, names that do not exist). ``loracli info`` must refuse what ``loracli.load``
refuses, and ``convert`` and ``sample`` must refuse before writing anything.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import loracli

TINY = dict(model_channels=8, channel_mult=[1, 2], attn_resolutions=[16], channels_per_head=8)


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: Any, body: bytes, raw: str | None = None) -> bytes:
    text = (raw if raw is not None else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + body


def tensors(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def first_float(header: dict) -> str:
    return next(k for k in tensors(header) if header[k]["dtype"] == "F32" and math.prod(header[k]["shape"]) > 1)


def with_config(edit: Callable[[dict], Any]) -> Callable[[dict, bytes], bytes]:
    def apply(header: dict, body: bytes) -> bytes:
        config = json.loads(header["__metadata__"]["config"])
        edit(config)
        header["__metadata__"]["config"] = json.dumps(config)
        return join(header, body)
    return apply


def with_entry(edit: Callable[[dict], Any]) -> Callable[[dict, bytes], bytes]:
    def apply(header: dict, body: bytes) -> bytes:
        edit(header[first_float(header)])
        return join(header, body)
    return apply


def with_values(value: float) -> Callable[[dict, bytes], bytes]:
    def apply(header: dict, body: bytes) -> bytes:
        start = header[first_float(header)]["data_offsets"][0]
        return join(header, body[:start] + struct.pack("<f", value) + body[start + 4:])
    return apply


def duplicate_name(header: dict, body: bytes) -> bytes:
    name = first_float(header)
    raw = json.dumps(header)
    entry = json.dumps({name: header[name]})[1:-1]
    return join(None, body, raw[:-1] + ", " + entry + "}")


def overlapping(header: dict, body: bytes) -> bytes:
    a, b = tensors(header)[:2]
    size = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[a]["data_offsets"][0] + size]
    return join(header, body)


def with_gap(header: dict, body: bytes) -> bytes:
    for k in tensors(header):
        header[k]["data_offsets"] = [o + 4 for o in header[k]["data_offsets"]]
    return join(header, b"\0" * 4 + body)


def meta(key: str, value: Any) -> Callable[[dict, bytes], bytes]:
    def apply(header: dict, body: bytes) -> bytes:
        header["__metadata__"][key] = value
        return join(header, body)
    return apply


def drop_tensor(header: dict, body: bytes) -> bytes:
    name = tensors(header)[-1]
    start, stop = header.pop(name)["data_offsets"]
    return join(header, body[:start])


def extra_tensor(header: dict, body: bytes) -> bytes:
    header["net.extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(body), len(body) + 4]}
    return join(header, body + b"\0" * 4)


def reshaped(header: dict, body: bytes) -> bytes:
    entry = header[next(k for k in tensors(header) if len(header[k]["shape"]) >= 2)]
    entry["shape"] = [math.prod(entry["shape"])]  # same bytes, another shape
    return join(header, body)


def relabel(dtype: str, shape: Callable[[list[int]], list[int]] = lambda s: s) -> Callable[[dict, bytes], bytes]:
    return with_entry(lambda e: e.update(dtype=dtype, shape=shape(e["shape"])))


CASES: dict[str, Callable[[dict, bytes], bytes]] = {
    "cut after 4 bytes": lambda h, b: join(h, b)[:4],
    "cut inside the header": lambda h, b: join(h, b)[:100],
    "cut inside the data": lambda h, b: join(h, b)[:-10],
    "header length 2**60": lambda h, b: struct.pack("<Q", 1 << 60) + join(h, b)[8:],
    "header length past the end": lambda h, b: struct.pack("<Q", len(join(h, b))) + join(h, b)[8:],
    "header not JSON": lambda h, b: join(None, b, "{not json" + " " * 20),
    "header a JSON list": lambda h, b: join(None, b, "[1, 2, 3]"),
    "header nested 100k deep": lambda h, b: join(None, b, '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "entry without data_offsets": with_entry(lambda e: e.pop("data_offsets")),
    "entry without dtype": with_entry(lambda e: e.pop("dtype")),
    "entry of unknown dtype": with_entry(lambda e: e.update(dtype="F99")),
    "entry with a negative dimension": with_entry(lambda e: e.update(shape=[-1] + e["shape"][1:])),
    "entry with a string shape": with_entry(lambda e: e.update(shape="3")),
    "entry with reversed offsets": with_entry(lambda e: e.update(data_offsets=e["data_offsets"][::-1])),
    "entry with float offsets": with_entry(lambda e: e.update(data_offsets=[float(o) for o in e["data_offsets"]])),
    "entry with an extra field": with_entry(lambda e: e.update(extra=1)),
    "entry a list": lambda h, b: join({**h, first_float(h): [1, 2]}, b),
    "shape that does not fill its bytes": with_entry(lambda e: e.update(shape=[2] + e["shape"])),
    "overlapping offsets": overlapping,
    "a gap between tensors": with_gap,
    "trailing bytes": lambda h, b: join(h, b + b"\0" * 8),
    "duplicate tensor names": duplicate_name,
    "__metadata__ a list": lambda h, b: join({**h, "__metadata__": [1]}, b),
    "__metadata__ value not a string": meta("step", 7),
    "not a loracli checkpoint": meta("format", "something-else"),
    "config not JSON": meta("config", "{"),
    "config a JSON list": meta("config", "[]"),
    "config without model_config": with_config(lambda c: c.pop("model_config")),
    "config cond not a list": with_config(lambda c: c.update(cond="uc-lora")),
    "config of another format version": with_config(lambda c: c.update(format=99)),
    "step not a number": meta("step", "many"),
    "extra a JSON list": meta("extra", "[]"),
    "unknown model": with_config(lambda c: c.update(model="nope")),
    "unknown preset": with_config(lambda c: c.update(preset="nope")),
    "unknown conditioning": with_config(lambda c: c.update(cond=["nope"], cond_options={"nope": {}})),
    "model setting it does not take": with_config(lambda c: c["model_config"].update(wings=2)),
    "model setting of the wrong type": with_config(lambda c: c["model_config"].update(channel_mult="abc")),
    "absurd network (65,536 channels)": with_config(lambda c: c["model_config"].update(model_channels=65536)),
    "absurd network (2**40 channels)": with_config(lambda c: c["model_config"].update(model_channels=1 << 40)),
    "missing tensor": drop_tensor,
    "unexpected tensor": extra_tensor,
    "tensor of another shape": reshaped,
    "float32 relabelled I32": relabel("I32"),
    "float32 relabelled F16 (twice the values)": relabel("F16", lambda s: [2 * s[0]] + s[1:]),
    "float32 relabelled U8": relabel("U8", lambda s: [4 * s[0]] + s[1:]),
    "NaN weight": with_values(float("nan")),
    "Inf weight": with_values(float("inf")),
    "-Inf weight": with_values(float("-inf")),
}
SAMPLED = ["float32 relabelled I32", "unknown preset", "NaN weight", "absurd network (65,536 channels)",
           "overlapping offsets", "entry without data_offsets"]
MEMORY = ["absurd network (65,536 channels)", "absurd network (2**40 channels)", "header length 2**60"]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "ck.safetensors"
    return loracli.save(loracli.create_model("nano", **TINY), path, step=3).read_bytes()


def broken(valid: bytes, name: str, folder: Path) -> Path:
    header, body = split(valid)
    path = folder / "broken.safetensors"
    path.write_bytes(CASES[name](header, body))
    return path


def assert_refused(result: Any, written: Path | None = None) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert 1 <= len(lines) <= 2 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("Error:"), result.output
    if written is not None:
        assert not written.exists() and not list(written.parent.glob(".*.tmp")), "an output was written"
    return result.output


def peak_growth_mib(run: Callable[[], Any]) -> tuple[Any, float | None]:
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))
    except OSError:
        return run(), None
    result = run()
    return result, (int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1)) - before) / 1024


def test_the_valid_checkpoint_passes_every_check(valid, tmp_path, cli):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(valid)
    assert cli("info", path).exit_code == 0
    assert cli("convert", path, tmp_path / "copy.safetensors").exit_code == 0
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_checkpoint_is_refused_by_info_and_convert(name, valid, tmp_path, cli):
    path = broken(valid, name, tmp_path)
    result, growth = peak_growth_mib(lambda: cli("info", path))
    assert_refused(result)
    if name in MEMORY and growth is not None:
        assert growth < 50, f"{name}: info grew the process by {growth:.0f} MiB"
    assert_refused(cli("convert", path, tmp_path / "out" / "c.safetensors"), tmp_path / "out" / "c.safetensors")
    with pytest.raises(loracli.UserError):
        loracli.load(path)


@pytest.mark.parametrize("name", SAMPLED)
def test_broken_checkpoint_is_refused_by_sample(name, valid, tmp_path, cli):
    path = broken(valid, name, tmp_path)
    out = tmp_path / "samples"
    assert_refused(cli("sample", path, "--seeds", "0-1", "--outdir", out))
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name, says", [
    ("NaN weight", r"NaN or infinite values in 'net\..*'"),
    ("float32 relabelled I32", r"dtype mismatch 1 \(net\..* I32 vs F32\)"),
    ("unknown preset", "has no preset 'nope'"),
    ("absurd network (65,536 channels)", "refused before building"),
    ("overlapping offsets", "overlaps"),
    ("duplicate tensor names", "appears twice"),
    ("trailing bytes", "8 bytes follow the last tensor"),
    ("entry without data_offsets", "not an entry of dtype, shape and data_offsets"),
    ("config a JSON list", "corrupt loracli metadata"),
])
def test_the_sentence_says_what_is_wrong(name, says, valid, tmp_path, cli):
    assert re.search(says, assert_refused(cli("info", broken(valid, name, tmp_path))).replace("\n", " "))


def test_allow_nonfinite_lets_info_and_load_describe_a_broken_run(valid, tmp_path, cli):
    path = broken(valid, "NaN weight", tmp_path)
    assert cli("info", path, "--allow-nonfinite").exit_code == 0
    model = loracli.load(path, allow_nonfinite=True)
    assert any(torch.isnan(t).any() for t in model.state_dict().values())
    dst = tmp_path / "c.safetensors"
    assert cli("convert", path, dst, "--allow-nonfinite").exit_code == 0 and dst.exists()
