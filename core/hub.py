"""Saving, pushing and loading patched models of every zoo: :func:`save_pretrained`, :func:`push_to_hub`,
:func:`from_pretrained`.

A checkpoint is a directory (or a Hub repo) with three files:

- ``model.safetensors``: the model's ``state_dict`` (``adapter_model.safetensors`` for adapters, below);
- ``dclszoo_config.json`` (:class:`CheckpointConfig`): the plugin that rebuilds the model, the architecture and
  its arguments (or a registered builder), the patch config, the weights' SHA-256 and the versions that wrote it;
- ``README.md``: a model card (``library_name: dclszoo``, tags, the patch summary),

plus the zoo's own files where the plugin writes them (timm's ``config.json``: ``timm.create_model("hf-hub:...")``
reads a dclszoo repo as well). Loading rebuilds the architecture without its weights (the plugin's
``dclszoo_build_model`` hook, a builder, or the ``model=`` you pass), patches it with the saved config, checks
every key and shape, then loads the tensors: the outputs are bit-identical to the saved model's.

**Adapters** (``adapter=True``, PEFT style) store only the tensors of the dclszoo modules (DCLS convolutions,
delay synapses) and of ``extra_modules`` (e.g. a new head), plus a reference to the base checkpoint: the zoo's
own pretrained weights (timm: ``pretrained_cfg['hf_hub_id']``) or any dclszoo checkpoint (``base_model=``).
Loading builds the base with its weights, patches it and overwrites the adapter's tensors. A fingerprint of the
base tensors is stored, and a base that changed since is reported by name.

**Safe loading**: nothing is unpickled (safetensors only; ``.bin``/``.pt`` weights are refused unless
``allow_pickle=True``, and even then go through ``torch.load(weights_only=True)``); no code named by a checkpoint
is imported or run; the weights file is checked (structure, SHA-256) and matched against the rebuilt model
before the first tensor is copied, so a failure leaves nothing half-loaded. Each failure is a
:class:`CheckpointError` naming the file or key and the fix.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from . import _hub_rebuild
from ._hub_config import ADAPTER_WEIGHTS, CONFIG_NAME, FULL_WEIGHTS, CheckpointConfig
from ._hub_rebuild import BUILDER_ATTR, register_builder, registered_builders
from ._model_card import model_card
from ._safe_io import (PICKLE_SUFFIXES, CheckpointError, check_state, file_sha256, read_pickle_weights,
                       read_safetensors, tensor_digest, write_safetensors)
from .api import is_patched, patch
from .config import config_from_dict
from .version import __version__

__all__ = ["save_pretrained", "push_to_hub", "from_pretrained", "register_builder", "registered_builders",
           "CheckpointConfig", "CheckpointError", "CONFIG_NAME"]

README = "README.md"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MAX_BASE_DEPTH = 4
_ATTRIBUTES = ("position_bounds", "path")  # non-tensor settings of dclszoo modules restored on load


# --------------------------------------------------------------------------- saving


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
            model = model._orig_mod
        else:
            return model


def _dclszoo_prefixes(model: nn.Module) -> list[str]:
    return [fqn for fqn, m in model.named_modules() if getattr(type(m), "dclszoo_patched", False)]


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(p == "" or key == p or key.startswith(p + ".") for p in prefixes)


def _module_attributes(model: nn.Module) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for fqn, m in model.named_modules():
        if not getattr(type(m), "dclszoo_patched", False):
            continue
        attrs: dict[str, Any] = {}
        bounds = m.__dict__.get("_position_bounds")
        if bounds is not None:
            attrs["position_bounds"] = [list(bounds[0]), list(bounds[1])]
        if hasattr(m, "delays") and getattr(m, "path", "auto") != "auto":
            attrs["path"] = m.path
        if attrs:
            out[fqn] = attrs
    return out


def _patch_config_dict(model: nn.Module) -> dict | None:
    config = getattr(model, "dclszoo_config", None)
    if config is None:
        return None
    if not hasattr(config, "to_dict"):
        raise TypeError(f"model.dclszoo_config is a {type(config).__name__} without to_dict(); dclszoo can only save "
                        f"configs that serialise to JSON (DclsConfig, DelayConfig).")
    return config.to_dict()


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *, adapter: bool = False,
                    base_model: str | os.PathLike | None = None, base_revision: str | None = None,
                    extra_modules: Iterable[str] = (), state_dict: Mapping[str, torch.Tensor] | None = None,
                    model_card_tags: Iterable[str] = (), _card_ref: str | None = None) -> Path:
    """Save a (patched) model of any zoo as a dclszoo checkpoint directory (see the module docstring).

    Args:
        model: The model; DDP / DataParallel / ``torch.compile`` wrappers are unwrapped.
        save_directory: Created if needed; files of the same names are overwritten.
        adapter: Store only the dclszoo modules' tensors (and ``extra_modules``) plus a reference to the base.
        base_model: Adapters: a dclszoo checkpoint (repo id or directory) the model started from. None = the
            zoo's pretrained weights the plugin names (timm: the model's ``pretrained_cfg['hf_hub_id']``).
        base_revision: Revision of the base (a commit sha pins it; None = the default branch when loading).
        extra_modules: Adapters: module names (prefixes) whose tensors are stored too, e.g. ``["head"]``.
        state_dict: The tensors to save instead of ``model.state_dict()`` (FSDP / DeepSpeed: pass
            ``accelerator.get_state_dict(model)`` together with the unwrapped model).
        model_card_tags: Extra tags for README.md.

    Returns:
        The directory.

    Raises:
        ValueError: an adapter without dclszoo modules or without a base, or an ``extra_modules`` entry that
            matches no tensor.
    """
    model = _unwrap(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module.")
    plugin, spec = _hub_rebuild.describe(model)
    state = dict(model.state_dict() if state_dict is None else state_dict)
    extra = [str(e) for e in ([extra_modules] if isinstance(extra_modules, str) else extra_modules)]
    fields: dict[str, Any] = {}
    if adapter:
        prefixes = _dclszoo_prefixes(model)
        if not prefixes:
            raise ValueError(f"adapter=True: this {type(model).__name__} has no dclszoo module; patch it "
                             f"(dclszoo.patch) or save it in full (adapter=False).")
        for e in extra:
            if not any(_under(k, [e]) for k in state):
                raise ValueError(f"extra_modules entry {e!r} matches no tensor of the model; expected module names "
                                 f"such as {sorted({k.split('.')[0] for k in state})[:6]}.")
        kept = {k: v for k, v in state.items() if _under(k, prefixes + extra)}
        base_fingerprint = {k: tensor_digest(v) for k, v in state.items() if k not in kept}
        if base_model is not None:
            base_format, base_ref = "dclszoo", os.fspath(base_model)
            if Path(base_ref).is_dir():
                if not (Path(base_ref) / CONFIG_NAME).is_file():
                    raise ValueError(f"base_model={base_ref!r} is a directory without {CONFIG_NAME}; save the base "
                                     f"with dclszoo.save_pretrained first (or base_model=None for the zoo's own base).")
                base_ref = str(Path(base_ref).resolve())
        else:
            base_format, base_ref = "native", spec.get("base_model")
            base_revision = base_revision if base_revision is not None else spec.get("base_revision")
            if base_ref is None:
                raise ValueError(
                    f"adapter=True needs a base checkpoint and {plugin or 'no plugin'!r} names none for this "
                    f"{type(model).__name__}: pass base_model=<repo id or directory of a dclszoo checkpoint of the "
                    f"model before training> (see dclszoo.save_pretrained)."
                )
        state, weights = kept, ADAPTER_WEIGHTS
        fields.update(base_model=base_ref, base_revision=base_revision, base_format=base_format,
                      extra_modules=extra, base_fingerprint=base_fingerprint)
    else:
        if base_model is not None or extra:
            raise ValueError("base_model and extra_modules apply to adapters only; pass adapter=True.")
        weights = FULL_WEIGHTS
    config = CheckpointConfig(
        mode="adapter" if adapter else "full", weights=weights, plugin=plugin,
        plugin_version=spec.get("plugin_version"), pip=spec.get("pip"), architecture=spec.get("architecture"),
        model_args=dict(spec.get("model_args") or {}), builder=copy.deepcopy(model.__dict__.get(BUILDER_ATTR)),
        model_class=f"{type(model).__module__}.{type(model).__qualname__}", patch_config=_patch_config_dict(model),
        module_attributes=_module_attributes(model), dclszoo_version=__version__, torch_version=torch.__version__,
        **fields,
    )
    try:
        config.to_json()  # everything must be JSON before the first file is written
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the description of this {type(model).__name__} (plugin {plugin!r}) is not JSON: {exc}; "
                        f"{CONFIG_NAME} can only hold JSON values.") from None
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, directory / weights, metadata={"format": "pt", "dclszoo_version": __version__})
    config.weights_sha256 = file_sha256(directory / weights)
    config.native_files = [] if adapter else _hub_rebuild.save_native(plugin, model, str(directory))
    (directory / CONFIG_NAME).write_text(config.to_json(indent=2) + "\n", encoding="utf-8")
    tags = list(spec.get("tags") or []) + list(model_card_tags)
    (directory / README).write_text(model_card(config, model, tags, _card_ref or str(directory)), encoding="utf-8")
    return directory


def push_to_hub(model: nn.Module, repo_id: str, *, commit_message: str = "Upload dclszoo model",
                private: bool | None = None, token: str | None = None, revision: str | None = None,
                create_pr: bool = False, **save_kwargs: Any):
    """:func:`save_pretrained` into a temporary directory, then upload it as one commit to ``repo_id``.

    Args:
        model: The model.
        repo_id: ``owner/name``; created if it does not exist.
        commit_message: Commit title.
        private: Visibility of a newly created repo.
        token: Hub token (default: the logged-in one / ``$HF_TOKEN``).
        revision: Branch to commit to (default: the default branch).
        create_pr: Open a pull request instead of committing to the branch.
        **save_kwargs: Passed to :func:`save_pretrained` (``adapter``, ``base_model``, ``extra_modules``, ...).

    Returns:
        huggingface_hub's ``CommitInfo``; ``.oid`` is the commit sha, which
        ``from_pretrained(repo_id, revision=...)`` loads exactly.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="dclszoo", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="dclszoo-push-") as tmp:
        save_pretrained(model, tmp, _card_ref=repo_id, **save_kwargs)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                 revision=revision, create_pr=create_pr)


# --------------------------------------------------------------------------- loading


class _Source:
    """A checkpoint directory, or a Hub repo whose files are downloaded (pinned to one commit) on demand."""

    def __init__(self, ref: str | os.PathLike, revision: str | None, hub_kwargs: dict) -> None:
        self.local = Path(ref) if Path(ref).is_dir() else None
        self.ref, self.revision, self.hub_kwargs = os.fspath(ref), revision, hub_kwargs
        if self.local is None and (isinstance(ref, os.PathLike) or Path(ref).exists() or self.ref.count("/") > 1
                                   or self.ref.startswith((".", "/", "~")) or "\\" in self.ref):
            raise CheckpointError(f"{self.ref!r} is neither a checkpoint directory nor a Hub repo id ('owner/name').")
        if self.local is not None and revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos; {self.ref!r} is a local directory.")

    def __str__(self) -> str:
        if self.local is not None:
            return f"checkpoint directory {self.ref!r}"
        return f"Hub repo {self.ref!r}" + (f" at revision {self.revision!r}" if self.revision else "")

    @property
    def fix(self) -> str:
        if self.local is not None:
            return "Save the checkpoint again (dclszoo.save_pretrained)."
        return "Download it again: from_pretrained(..., force_download=True)."

    def fetch(self, filename: str, required: str) -> Path:
        if self.local is not None:
            path = self.local / filename
            if not path.is_file():
                raise CheckpointError(f"{self} has no {filename}: {required}")
            return path
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(self.ref, filename, revision=self.revision, **self.hub_kwargs))
        except EntryNotFoundError:
            raise CheckpointError(f"{self} has no {filename}: {required}") from None
        # Later files come from the same commit even if the branch moves meanwhile (snapshots/<commit>/<file>).
        if _COMMIT.match(path.parent.name) and path.parent.parent.name == "snapshots":
            self.revision = path.parent.name
        return path


def _read_config(source: _Source) -> CheckpointConfig:
    path = source.fetch(CONFIG_NAME, "it is not a dclszoo checkpoint (timm checkpoints load with "
                                     "timm.create_model('hf-hub:...'), transformers ones with their Auto classes).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CheckpointConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{CONFIG_NAME} of {source} is invalid: {exc}") from None


def _read_weights(source: _Source, config: CheckpointConfig, allow_pickle: bool) -> dict[str, torch.Tensor]:
    what = "the weights its dclszoo_config.json names."
    if config.weights.lower().endswith(PICKLE_SUFFIXES):
        if not allow_pickle:
            raise CheckpointError(
                f"{source} stores its weights as {config.weights!r}, a pickle-based file; dclszoo loads safetensors "
                f"only. If you trust its origin, pass allow_pickle=True (read with torch.load(weights_only=True)), "
                f"or convert it to safetensors."
            )
        return read_pickle_weights(source.fetch(config.weights, what))
    if not config.weights.endswith(".safetensors"):
        raise CheckpointError(f"{source}: weights file {config.weights!r} is not a safetensors file (*.safetensors).")
    state, _ = read_safetensors(source.fetch(config.weights, what), fix=source.fix, sha256=config.weights_sha256)
    return state


def _patch(model: nn.Module, config: CheckpointConfig, where: str) -> None:
    if config.patch_config is None:
        return
    if is_patched(model):  # a model= patched by the caller (or a plugin that builds DCLS layers): same config?
        own = getattr(model, "dclszoo_config", None)
        own = own.to_dict() if hasattr(own, "to_dict") else None
        if own is not None and own != config.patch_config:
            diff = sorted(k for k in set(own) | set(config.patch_config) if own.get(k) != config.patch_config.get(k))
            raise CheckpointError(
                f"{where}: the model is patched with another config than the checkpoint's (differs in {diff}: "
                f"{ {k: own.get(k) for k in diff} } vs { {k: config.patch_config.get(k) for k in diff} }); pass an "
                f"unpatched model= (it is patched with the saved config) or one patched identically."
            )
        return
    try:
        patch_config = config_from_dict(config.patch_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: patch_config is invalid: {exc}") from None
    with warnings.catch_warnings():  # the conversion of not-yet-loaded weights may be lossy: they are overwritten
        warnings.filterwarnings("ignore", message=".*does not represent the dense kernel")
        patch(model, patch_config)
    for m in model.modules():
        m.__dict__.pop("conversion_error", None)  # described the throw-away conversion


def _apply_attributes(model: nn.Module, attributes: Mapping[str, Mapping[str, Any]], where: str) -> None:
    modules = dict(model.named_modules())
    for fqn, attrs in attributes.items():
        if fqn not in modules:
            raise CheckpointError(f"{where}: module_attributes names module {fqn!r}, which the rebuilt model lacks.")
        for name, value in attrs.items():
            if name not in _ATTRIBUTES:
                warnings.warn(f"{where}: ignoring unknown module attribute {fqn}.{name} (written by a newer dclszoo).",
                              stacklevel=3)
                continue
            setattr(modules[fqn], name, value)


def _match_dtype(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """A checkpoint whose floating tensors all have one non-float32 dtype reloads in that dtype."""
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and params == {torch.float32} and dtypes != params:
        model.to(dtypes.pop())


def _check_adapter(model: nn.Module, state: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor],
                   config: CheckpointConfig, where: str) -> None:
    prefixes = _dclszoo_prefixes(model)
    missing = [k for k in current if _under(k, prefixes) and k not in state]
    if missing:
        raise CheckpointError(f"{where}: the adapter lacks {len(missing)} tensor(s) of the rebuilt model's dclszoo "
                              f"modules, e.g. {missing[:4]}; it was saved for another patch config.")
    changed = sorted(k for k, d in (config.base_fingerprint or {}).items()
                     if k in current and k not in state and tensor_digest(current[k]) != d)
    if changed:
        warnings.warn(
            f"{where}: {len(changed)} base tensor(s) differ from those the adapter was saved with, e.g. {changed[:4]}; "
            f"outputs will differ. The base moved (pin base_revision to a commit), or these modules were trained "
            f"too: save them with extra_modules=[...].", UserWarning, stacklevel=3,
        )


def from_pretrained(repo_id_or_dir: str | os.PathLike, revision: str | None = None, *, model: nn.Module | None = None,
                    allow_pickle: bool = False, token: str | None = None, cache_dir: str | os.PathLike | None = None,
                    local_files_only: bool = False, force_download: bool = False, _depth: int = 0) -> nn.Module:
    """Load a checkpoint written by :func:`save_pretrained` / :func:`push_to_hub` (see the module docstring).

    Args:
        repo_id_or_dir: A local checkpoint directory or a Hub repo id.
        revision: Hub branch, tag or commit sha (None = the default branch).
        model: Build nothing; patch (if not patched yet) and fill this instance. Needed for models saved without
            a plugin architecture or a registered builder; for adapters, the base model with its weights.
        allow_pickle: Accept ``.bin`` / ``.pt`` weights (read with ``torch.load(weights_only=True)``).
        token, cache_dir, local_files_only, force_download: As for ``huggingface_hub.hf_hub_download``
            (``HF_HUB_OFFLINE=1`` reloads from the cache).

    Returns:
        The model in ``eval()`` mode, on the CPU.

    Raises:
        CheckpointError: not a dclszoo checkpoint, invalid config, a plugin or builder that is not available,
            refused pickle weights, a truncated / corrupt weights file, or keys / shapes that do not match.
    """
    hub_kwargs = dict(token=token, cache_dir=cache_dir, local_files_only=local_files_only,
                      force_download=force_download)
    source = _Source(repo_id_or_dir, revision, hub_kwargs)
    config = _read_config(source)
    where = str(source)
    state = _read_weights(source, config, allow_pickle)  # checked before anything is built or touched
    _hub_rebuild.require_plugin(config, where)
    adapter, given = config.mode == "adapter", model is not None
    if model is None:
        if adapter and config.base_format == "dclszoo":
            if _depth >= _MAX_BASE_DEPTH:
                raise CheckpointError(f"{where}: base checkpoints nest deeper than {_MAX_BASE_DEPTH} levels.")
            model = from_pretrained(config.base_model, config.base_revision, allow_pickle=allow_pickle,
                                    _depth=_depth + 1, **hub_kwargs)
        else:
            model = _hub_rebuild.build(config, pretrained=adapter, where=where)
    elif not isinstance(_unwrap(model), nn.Module):
        raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module or None.")
    model = _unwrap(model)
    _patch(model, config, where)
    _apply_attributes(model, config.module_attributes, where)
    if not adapter:
        _match_dtype(model, state)
    hint = ("The model= you passed does not match the saved one." if given else
            "The rebuilt architecture or patch config differs from the saved one (edited dclszoo_config.json?).")
    current = model.state_dict()
    check_state(state, current, f"{config.weights} of {where}", require_all=not adapter, hint=hint)
    if adapter:
        _check_adapter(model, state, current, config, where)
    model.load_state_dict(state, strict=not adapter)
    return model.eval()
