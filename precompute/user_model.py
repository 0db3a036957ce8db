"""Loading a user's own PyTorch model: ``"path/to/file.py:make_model"`` plus state_dict checkpoints.

Checkpoints are read with ``torch.load(weights_only=True)``: plain tensors only, never arbitrary
pickled code. Every failure names the file and says what to change.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from precompute.errors import InfluenceExplorerError, ModelError


def load_factory(spec: str, key: str = "model.factory", what: str = "model", example: str = "make_model",
                 error: type[InfluenceExplorerError] = ModelError):
    """Resolve ``"file.py:function"`` to the callable; failures raise ``error`` naming ``key`` / the file."""
    if ":" not in spec:
        raise error(f"{key}: {spec!r} must look like 'path/to/file.py:{example}'")
    path_str, func = spec.rsplit(":", 1)
    path = Path(path_str)
    if not path.is_file():
        raise error(f"{path}: {what} file not found; set {key} = 'path/to/file.py:{func}'")
    mod_name = f"_influence_user_{what}_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report any error as one line
        raise error(f"{path}: importing the {what} file failed ({type(exc).__name__}: {exc})") from None
    if not callable(getattr(module, func, None)):
        raise error(f"{path}: has no function {func!r}; define it or fix {key}")
    return getattr(module, func)


def build_user_model(spec: str) -> nn.Module:
    """Call the factory and check that it returns an ``nn.Module``."""
    make = load_factory(spec)
    try:
        model = make()
    except Exception as exc:  # the user's code: report any error as one line
        raise ModelError(f"model.factory: calling {spec} failed ({type(exc).__name__}: {exc}); fix the factory "
                         "so that it returns the model") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory: {spec} returned {type(model).__name__}, not a torch.nn.Module; "
                         "make the factory return the model")
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state_dict with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: checkpoint not found; set model.checkpoint to a saved state_dict (.pt)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{p}: not a plain state_dict (refused by torch.load(weights_only=True)); save it with "
                         "torch.save(model.state_dict(), path)") from None
    except Exception as exc:  # a garbage file makes the unpickler raise anything (KeyError, ...)
        raise ModelError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__}); re-save it with "
                         "torch.save(model.state_dict(), path)") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p}: holds a {type(obj).__name__}, not a state_dict of tensors; save it with "
                         "torch.save(model.state_dict(), path)")
    bad = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{p}: {len(bad)} tensor(s) hold NaN or inf (first {bad[0]!r}); the training diverged: "
                         "use a checkpoint from before it did")
    return obj


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a checkpoint whose keys or shapes do not match the model, saying which."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs model {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    if wrong:
        problems.append(f"shape mismatch {wrong[0]}{f' (+{len(wrong) - 1} more)' if len(wrong) > 1 else ''}")
    if problems:
        raise ModelError(f"{source}: does not match the model from model.factory: {'; '.join(problems)}; "
                         "use the checkpoint saved from this architecture")


def check_output_size(model: nn.Module, example: torch.Tensor, n_classes: int, source: str) -> None:
    """One forward pass on one sample: the output must be ``[1, n_classes]`` logits."""
    with torch.no_grad():
        try:
            out = model(example[:1])
        except Exception as exc:
            raise ModelError(f"{source}: forward pass on an input of shape {tuple(example[:1].shape)} failed "
                             f"({type(exc).__name__}: {exc}); make the model accept the dataset's inputs") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{source}: the model's forward returns a {type(out).__name__}, not a tensor of logits "
                         f"[batch, {n_classes}]; make forward return only the logits")
    if out.dim() != 2 or out.shape[1] != n_classes:
        raise ModelError(f"{source}: the model outputs shape {tuple(out.shape)} but the data has {n_classes} "
                         f"classes; make its last layer output {n_classes} logits")


def load_user_model(spec: str, checkpoints: Sequence[str | Path], example: torch.Tensor,
                    n_classes: int) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Build the model, validate and load the last checkpoint; returns ``(model, all state_dicts)``."""
    model = build_user_model(spec)
    states = []
    for ck in checkpoints:
        state = load_state_dict_file(ck)
        check_state_dict(model, state, str(ck))
        states.append(state)
    if states:
        model.load_state_dict(states[-1])
    check_output_size(model.eval(), example.to(next(model.parameters()).dtype), n_classes, spec)
    return model, states
