"""Converting NVlabs/edm pickles: reference outputs reproduced, keys copied one to one, the restricted
unpickler refusing code, and the ``loracli convert`` command.

The snapshots in tests/fixtures/edm were pickled by the reference code (see make_edm_fixtures.py); the
expected outputs in the .npz files are the reference networks' own.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import loracli
from loracli import registry
from loracli.errors import UserError
from loracli.io.convert import convert, convert_model, read_any
from loracli.io.convert.base import detect_format
from loracli.io.convert.unpickle import ForbiddenGlobal, InertRecord, PersistentRecord, load_file, loads

FIXTURES = Path(__file__).parent / "fixtures" / "edm"
CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))
PLACEHOLDER = "# source removed"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, Path]:
    """The fixture pickles, decompressed: ``{case: path}`` plus ``training-state``."""
    folder = tmp_path_factory.mktemp("edm")
    paths = {}
    for xz in FIXTURES.glob("*.xz"):
        target = folder / xz.name[: -len(".xz")]
        target.write_bytes(lzma.decompress(xz.read_bytes()))
        paths[target.name.split(".")[0]] = target
    paths["training-state"] = paths.pop("training-state-ddpmpp-vp")
    return paths


def reference(case: str) -> tuple[tuple, dict, np.ndarray]:
    data = np.load(FIXTURES / f"{case}.npz")
    labels = torch.from_numpy(data["class_labels"]) if "class_labels" in data else None
    kwargs = {"augment_labels": torch.from_numpy(data["augment_labels"])} if "augment_labels" in data else {}
    return (torch.from_numpy(data["x"]), torch.from_numpy(data["sigma"]), labels), kwargs, data


def assert_reproduces(model, case: str) -> None:
    args, kwargs, data = reference(case)
    with torch.no_grad():
        out = model(*args, **kwargs).numpy()
    expected = data["denoised"]
    assert np.abs(out - expected).max() / np.abs(expected).max() < 1e-5


@pytest.mark.parametrize("case", CASES)
def test_converted_network_reproduces_the_reference(case, snapshots):
    model = convert_model(snapshots[case])
    assert_reproduces(model, case)
    _, _, data = reference(case)
    assert list(model.net.state_dict()) == list(data["init_keys"])  # the reference's keys, in its order
    assert sum(p.numel() for p in model.parameters()) == int(data["num_params"])
    assert model.net.sigma_min == pytest.approx(float(data["sigma_min"]), rel=1e-7)
    assert model.net.sigma_max == pytest.approx(float(data["sigma_max"]), rel=1e-7)
    np.testing.assert_array_equal(model.net.round_sigma(torch.from_numpy(data["sigma"])).numpy(), data["round_sigma"])


def test_conversion_copies_the_pickled_tensors_bit_for_bit(snapshots):
    record = load_file(snapshots["ncsnpp-edm"])["ema"]
    model = convert_model(snapshots["ncsnpp-edm"])
    ours = model.net.state_dict()
    from loracli.io.convert.unpickle import state_dict

    theirs = state_dict(record)
    assert list(theirs) == list(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert "model.map_noise.freqs" in theirs and "model.enc.4x4_aux_residual.weight" in theirs


def test_config_is_the_reference_constructor_config(snapshots):
    config = read_any(snapshots["adm-iddpm"]).model_config
    assert config["precond"] == "iddpm" and config["model_type"] == "DhariwalUNet"
    assert (config["M"], config["C_1"], config["C_2"]) == (50, 0.001, 0.008)
    assert (config["model_channels"], config["channel_mult"], config["channel_mult_emb"]) == (16, [1, 4], 1)
    assert config["label_dim"] == 0 and config["scale_shift"] is True
    json.dumps(config, allow_nan=False)


def test_provenance_records_hashes_and_training_settings(snapshots):
    foreign = read_any(snapshots["ddpmpp-edm-cond"])
    source = foreign.source
    assert source["format"] == "edm-pickle" and source["key"] == "ema" and foreign.ema
    assert source["classes"] == ["EDMPrecond", "SongUNet"]
    assert source["sha256"] == hashlib.sha256(snapshots["ddpmpp-edm-cond"].read_bytes()).hexdigest()
    assert source["module_src_sha256"] == [hashlib.sha256(PLACEHOLDER.encode()).hexdigest()]
    assert source["loss_fn"] == {"class": "EDMLoss", "P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}
    assert source["augment_pipe"]["class"] == "AugmentPipe" and source["augment_pipe"]["p"] == 0.12
    assert source["dataset_kwargs"]["resolution"] == 8


def test_training_state_gives_the_training_network(snapshots):
    assert detect_format(snapshots["training-state"]) == "edm-pickle"
    model = convert_model(snapshots["training-state"])
    assert model.converted_from["key"] == "net" and not model.converted_from["ema"]
    assert_reproduces(model, "ddpmpp-vp")


def test_key_chooses_the_entry_and_a_wrong_key_lists_the_entries(snapshots):
    assert read_any(snapshots["ddpmpp-vp"], key="ema").source["key"] == "ema"
    with pytest.raises(UserError, match="no NVlabs/edm network under 'loss_fn'; its keys are ema, loss_fn"):
        read_any(snapshots["ddpmpp-vp"], key="loss_fn")
    with pytest.raises(UserError, match="has no key 'ema_old'"):
        read_any(snapshots["ddpmpp-vp"], key="ema_old")


def test_embedded_source_is_never_executed(snapshots, tmp_path, monkeypatch):
    """The stock loader would exec module_src; swap in code (same length) that would leave a file behind."""
    payload = "open('MK','w')#x"
    assert len(payload) == len(PLACEHOLDER)
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(snapshots["ddpmpp-vp"].read_bytes().replace(PLACEHOLDER.encode(), payload.encode()))
    monkeypatch.chdir(tmp_path)
    record = load_file(hostile)["ema"]
    assert isinstance(record, PersistentRecord) and record.module_src == payload
    assert_reproduces(convert_model(hostile), "ddpmpp-vp")
    assert not (tmp_path / "MK").exists()


def reduce_pickle(module: str, name: str, argument: str) -> bytes:
    """A protocol-4 snapshot-shaped pickle: ``{'ema': module.name(argument)}``, written opcode by opcode."""
    text = argument.encode()
    return (b"\x80\x04}\x8c\x03ema" + f"c{module}\n{name}\n".encode() + b"\x8c" + bytes([len(text)]) + text
            + b"\x85R" + b"s.")


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                         ("builtins", "exec"), ("subprocess", "check_call"), ("torch", "load")])
def test_code_in_a_pickle_is_refused_before_anything_runs(module, name, tmp_path, cli):
    marker = tmp_path / "marker"
    command = f"touch {marker}" if name != "eval" and name != "exec" else f"open({str(marker)!r}, 'w')"
    src, dst = tmp_path / "network-snapshot-000000.pkl", tmp_path / "out.safetensors"
    src.write_bytes(reduce_pickle(module, name, command))

    with pytest.raises(ForbiddenGlobal) as caught:
        loads(src.read_bytes())
    assert caught.value.name == f"{module}.{name}"
    result = cli("convert", src, dst)
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and f"'{module}.{name}'" in message and "refused" in message
    assert not marker.exists() and not dst.exists()


def test_a_global_hidden_in_a_storage_blob_is_refused(tmp_path):
    """The stock torch.storage._load_from_bytes unpickles its blob with weights_only=False."""
    inner = pickle.dumps(("not", "a", "storage"), protocol=2).replace(b"\x80\x02", b"\x80\x02cposix\nsystem\n0", 1)
    outer = (b"\x80\x04}\x8c\x03ema" + b"ctorch.storage\n_load_from_bytes\n" + b"C" + bytes([len(inner)]) + inner
             + b"\x85R" + b"s.")
    with pytest.raises(ForbiddenGlobal):
        loads(outer)


def test_allow_list_is_extensible_per_call():
    blob = b"\x80\x04" + b"ctraining.lora\nLoraInjectedConv\n" + b")\x81" + b"}\x8c\x01r\x4b\x04s" + b"b."
    with pytest.raises(ForbiddenGlobal, match="training.lora.LoraInjectedConv"):
        loads(blob)
    record = loads(blob, inert_classes={"training.lora.LoraInjectedConv"})
    assert isinstance(record, InertRecord) and record.class_name == "training.lora.LoraInjectedConv"
    assert record.state == {"r": 4}
    assert loads(b"\x80\x04cmy.module\nhelper\n.", extra_globals={"my.module.helper": len}) is len


@pytest.mark.parametrize("spelling", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numpy_scalars_load_under_either_module_spelling(spelling):
    blob = pickle.dumps(np.float64(0.5) ** 0.5, protocol=2)
    for name in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        blob = blob.replace(name + b"\n", spelling + b"\n")
    assert spelling in blob and loads(blob) == np.sqrt(0.5)


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.98])
def test_truncated_pickle_is_a_one_line_error(keep, snapshots, tmp_path, cli):
    data = snapshots["ddpmpp-edm-cond"].read_bytes()
    src, dst = tmp_path / "cut.pkl", tmp_path / "out.safetensors"
    src.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_any(src)
    result = cli("convert", src, dst)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and not dst.exists()


def test_truncated_training_state_is_a_one_line_error(snapshots, tmp_path):
    data = snapshots["training-state"].read_bytes()
    src = tmp_path / "training-state-000100.pt"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_any(src)


def test_cli_round_trip_then_load_gives_the_same_outputs(snapshots, tmp_path, cli):
    dst = tmp_path / "edm.safetensors"
    result = cli("convert", snapshots["adm-edm-cond"], dst)
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(dst) in lines[0] and "edm" in lines[0] and "593,971 parameters" in lines[0]
    model = loracli.load(dst)
    assert model.config["model_config"]["precond"] == "edm" and model.checkpoint["ema"]
    assert model.checkpoint["extra"]["converted_from"]["file"] == snapshots["adm-edm-cond"].name
    assert_reproduces(model, "adm-edm-cond")


def test_options_of_another_format_are_refused(snapshots, tmp_path, cli):
    result = cli("convert", snapshots["ddpmpp-vp"], tmp_path / "out.safetensors", "--num_heads", "4")
    assert result.exit_code == 2 and "--num-heads does not apply to edm-pickle" in result.output
    result = cli("convert", snapshots["ddpmpp-vp"], tmp_path / "out.safetensors", "--bases", "4")
    assert result.exit_code == 2 and "--cond" in result.output


@pytest.mark.skipif("uc-lora" not in registry.conditions(), reason="the uc-lora variant is not registered")
def test_drop_in_uc_lora_starts_from_the_converted_network(snapshots, tmp_path, cli):
    dst = tmp_path / "uclora.safetensors"
    result = cli("convert", snapshots["ddpmpp-edm-cond"], dst, "--cond", "uc-lora", "--bases", "3",
                 "--lora-rank", "2")
    assert result.exit_code == 0 and "uc-lora" in result.output
    model = loracli.load(dst)
    assert model.config["cond"] == ["uc-lora"]
    assert model.config["cond_options"]["uc-lora"]["bases"] == 3
    assert model.config["cond_options"]["uc-lora"]["lora_rank"] == 2
    assert_reproduces(model, "ddpmpp-edm-cond")  # the adapters start at zero


def test_convert_function_writes_a_loadable_checkpoint(snapshots, tmp_path):
    dst = convert(snapshots["ncsnpp-ve"], tmp_path / "sub" / "ve.safetensors")
    assert dst.exists()
    assert_reproduces(loracli.load(dst), "ncsnpp-ve")
