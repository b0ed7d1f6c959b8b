"""The model card (README.md) of a saved dclszoo checkpoint: Hub metadata and a summary of the patch."""

from __future__ import annotations

import json
from collections import Counter

import torch.nn as nn

from ._hub_config import CheckpointConfig

__all__ = ["model_card"]


def _yaml_list(name: str, values: list[str]) -> list[str]:
    return [f"{name}:"] + [f"- {json.dumps(v)}" for v in values]


def _is_repo_id(ref: str | None) -> bool:
    """Whether ``ref`` looks like a Hub repo id (``owner/name``), not a local path."""
    return bool(ref) and ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and "\\" not in ref


def _summary(model: nn.Module) -> list[str]:
    kinds: Counter = Counter()
    counts = {"weight": 0, "positions": 0, "sigma": 0, "delays": 0}
    seen: set[int] = set()
    for m in model.modules():
        if not getattr(type(m), "dclszoo_patched", False):
            continue
        kinds[type(m).__name__] += 1
        for name, p in m.named_parameters(recurse=False):
            if id(p) not in seen and name in counts:
                seen.add(id(p))
                counts[name] += p.numel()
    total = sum(p.numel() for p in model.parameters())
    if not kinds:
        return ["No dclszoo module (a plain model)."]
    lines = [f"- dclszoo modules: {', '.join(f'{n} x {k}' for k, n in sorted(kinds.items()))}",
             f"- parameters: {total:,} in total"]
    for name, label in (("positions", "learnable tap positions"), ("sigma", "learnable Gaussian widths"),
                        ("delays", "learnable synaptic delays")):
        if counts[name]:
            lines.append(f"- {label}: {counts[name]:,}")
    return lines


def model_card(config: CheckpointConfig, model: nn.Module, tags: list[str], ref: str) -> str:
    """README.md text: YAML front matter (``library_name: dclszoo``, tags, ``base_model`` of adapters), then
    what the model is, the patch config, the module summary and how to load it (``from_pretrained(ref)``)."""
    patch = config.patch_config or {}
    kind = patch.get("config_type")
    all_tags = ["dclszoo"]
    if kind == "DclsConfig" or any(getattr(type(m), "dclszoo_patched", False) and hasattr(m, "positions")
                                   for m in model.modules()):
        all_tags.append("dcls")
    if kind == "DelayConfig" or any(hasattr(m, "delays") and getattr(type(m), "dclszoo_patched", False)
                                    for m in model.modules()):
        all_tags.append("learnable-delays")
    if config.plugin:
        all_tags.append(config.plugin)
    if config.mode == "adapter":
        all_tags.append("adapter")
    all_tags += [t for t in tags if t not in all_tags]
    front = ["---", "library_name: dclszoo"] + _yaml_list("tags", all_tags)
    if config.mode == "adapter" and _is_repo_id(config.base_model):
        front.append(f"base_model: {json.dumps(config.base_model)}")
    front.append("---")
    what = config.architecture or (config.builder or {}).get("name") or config.model_class or "model"
    body = [
        "", f"# {what} (dclszoo)", "",
        f"Saved with dclszoo {config.dclszoo_version} (torch {config.torch_version})"
        + (f", plugin `{config.plugin}`" + (f" {config.plugin_version}" if config.plugin_version else "")
           if config.plugin else ", no plugin (plain torch model)") + ".",
    ]
    if config.mode == "adapter":
        extra = f" and those of {', '.join(config.extra_modules)}" if config.extra_modules else ""
        at = f" at revision `{config.base_revision}`" if config.base_revision else ""
        body += ["", f"**Adapter**: only the dclszoo modules' tensors{extra} are stored; the rest comes from the base "
                     f"checkpoint `{config.base_model}`{at}."]
    body += ["", "## Patch", ""]
    if patch:
        body += ["| setting | value |", "|---|---|"]
        body += [f"| {k} | `{json.dumps(v)}` |" for k, v in patch.items() if k != "config_type"]
        body += [""]
    body += _summary(model)
    body += ["", "## Load", "", "```python", "import dclszoo", "",
             f"model = dclszoo.from_pretrained({json.dumps(ref)})", "```", ""]
    if config.builder is not None:
        body += [f"The model is rebuilt by the builder `{config.builder['name']}` registered by "
                 f"`{config.builder.get('module')}`: import that module first.", ""]
    if config.native_files:
        body += [f"Zoo-native files are included ({', '.join(config.native_files)}): the zoo's own loader reads this "
                 f"checkpoint too.", ""]
    return "\n".join(front + body)
