"""Resumable training checkpoints shared by the trainers: model tensors, optimizer state, JSON meta.

``save`` writes ``model.safetensors``, ``optimizer.safetensors`` (Adam state as flat tensors) and
``state.json`` into ``OUT/checkpoint`` through a temporary folder and renames them only once all three
are written, so an interrupted save leaves the previous checkpoint whole. No pickles anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint"
_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as flat tensors (safetensors) + the non-tensor rest as JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key in sorted(tensors):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = tensors[key]
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save(
    out_dir: Path, tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer, meta: dict[str, Any]
) -> Path:
    """Write a checkpoint (``meta`` gains the optimizer's JSON part under "optimizer"); returns its folder."""
    from safetensors.torch import save_file

    folder = out_dir / CHECKPOINT
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    ot, ometa = optimizer_tensors(opt)
    save_file(ot, str(tmp / "optimizer.safetensors"))
    text = json.dumps({**meta, "optimizer": ometa}, indent=2, sort_keys=True) + "\n"
    (tmp / "state.json").write_text(text, encoding="utf-8")
    for name in _FILES:  # commit after all written
        os.replace(tmp / name, folder / name)
    tmp.rmdir()
    return folder


def load(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None:
    """(model tensors, optimizer tensors, meta) of ``OUT/checkpoint``, or None when there is none."""
    from safetensors.torch import load_file

    folder = out_dir / CHECKPOINT
    if not (folder / "state.json").is_file():
        return None
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return (
        load_file(str(folder / "model.safetensors")),
        load_file(str(folder / "optimizer.safetensors")),
        meta,
    )
