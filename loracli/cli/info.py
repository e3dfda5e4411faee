"""``loracli info``: what a checkpoint holds, read from its metadata and a shape-only (meta device) rebuild."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loracli.cli.common import handle_errors


def summarize(path: Path) -> dict[str, Any]:
    """The checkpoint's config, provenance, adapted layers and parameter counts, without loading its tensors.

    The network is rebuilt from the config on the meta device (shapes only, instant even for large models)
    and its state-dict keys are compared with the file's tensor table.
    """
    import torch

    from loracli.build import build_model
    from loracli.conditioning.inject import lora_projections
    from loracli.io.checkpoint import read_header, read_metadata

    info = read_metadata(path)
    tensors = {k for k in read_header(path) if k != "__metadata__"}
    with torch.device("meta"):
        model = build_model(info["config"])
    layers = []
    for name, layer in lora_projections(model.net).items():
        layers.append({
            "name": name, "in": layer.in_features, "out": layer.out_features,
            "adapters": {b.variant: {"rank": b.rank, "bases": b.bases, "bias": b.bias is not None}
                         for b in layer.adapters.values()},
            "parameters": sum(p.numel() for p in layer.adapters.parameters()),
        })
    base = sum(p.numel() for p in model.base_parameters())
    adapters = sum(p.numel() for p in model.condition_parameters())
    return {
        "path": str(path), "bytes": path.stat().st_size, "version": info["version"], "config": info["config"],
        "step": info["step"], "ema": info["ema"], "extra": info["extra"], "layers": layers,
        "parameters": {"base": base, "adapters": adapters, "total": base + adapters},
        "tensors": len(tensors), "tensors_match": tensors == set(model.state_dict()),
    }


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _print(summary: dict[str, Any], out: Console) -> None:
    config = summary["config"]
    mc = config["model_config"]
    overview = Table(show_header=False, box=None, pad_edge=False)
    overview.add_column(style="bold", no_wrap=True)
    overview.add_column(overflow="fold")
    overview.add_row("checkpoint", f"{summary['path']} ({summary['bytes'] / 1e6:.1f} MB, {summary['tensors']} tensors, "
                                   f"written by loracli {summary['version']})")
    preset = f"preset {config['preset']}" if config.get("preset") else "no preset"
    overview.add_row("model", f"{config['model']} ({config['family']} family), {preset}")
    overview.add_row("settings", _options({k: v for k, v in mc.items() if k not in ("label_dim", "scale_shift")}))
    overview.add_row("classes", str(mc.get("label_dim") or "unconditional"))
    conds = [f"{n} ({_options(config['cond_options'].get(n, {}))})" for n in config["cond"]]
    overview.add_row("conditioning", "; ".join(conds) or "none (baseline)")
    overview.add_row("only LoRA", "yes: no scale-and-shift in the base network" if config.get("only_lora") else "no")
    overview.add_row("weights", f"step {summary['step']}, {'EMA' if summary['ema'] else 'raw (not EMA)'}")
    p = summary["parameters"]
    overview.add_row("parameters", f"{p['total']:,} = base {p['base']:,} + conditioning {p['adapters']:,}")
    source = summary["extra"].get("converted_from")
    if isinstance(source, dict):
        details = [source.get("format"), f"key {source['key']}" if source.get("key") else None,
                   f"sha256 {source['sha256'][:12]}…" if source.get("sha256") else None]
        overview.add_row("converted from", f"{source.get('file', '?')} ({', '.join(d for d in details if d)}); "
                                           "`--json` shows all provenance")
    elif source:
        overview.add_row("converted from", str(source))
    data = summary["extra"].get("data")
    if isinstance(data, dict):
        where = "built-in data" if data.get("builtin") else data.get("path") or data.get("name")
        overview.add_row("trained on", f"{where} ({data.get('name')}, {data.get('resolution')} px)")
    train = summary["extra"].get("train")
    if isinstance(train, dict):
        recipe = train.get("train", {})
        overview.add_row("recipe", f"{train.get('description') or train.get('preset')}; batch {recipe.get('batch')}, "
                                   f"lr {recipe.get('lr')}, {summary['extra'].get('kimg', '?')} kimg seen "
                                   "(`--json` shows the whole recipe)")
    others = sorted(k for k in summary["extra"] if k not in ("converted_from", "data", "train", "kimg"))
    if others:
        overview.add_row("provenance", f"also recorded: {', '.join(others)} (`--json`)")
    if not summary["tensors_match"]:
        overview.add_row("[red]warning[/]", "the file's tensors do not match the network its config describes")
    out.print(overview)

    if summary["layers"]:
        table = Table(title=f"Adapted layers ({len(summary['layers'])})", title_justify="left")
        for col in ("layer", "d_in → d_out", "adapters (rank × bases)", "parameters"):
            table.add_column(col)
        for layer in summary["layers"]:
            adapters = "\n".join(f"{k}: {a['rank']} × {a['bases']}{' + bias' if a['bias'] else ''}"
                                 for k, a in layer["adapters"].items())
            table.add_row(layer["name"], f"{layer['in']} → {layer['out']}", adapters, f"{layer['parameters']:,}")
        out.print(table)


@handle_errors
def command(
    ckpt: Annotated[Path, typer.Argument(help="A loracli checkpoint (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a checkpoint's model, conditioning, adapted layers and parameter counts.

    Example:

      loracli info runs/nano/ckpt.safetensors
    """
    summary = summarize(ckpt)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        _print(summary, Console())
