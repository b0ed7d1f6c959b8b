"""Checkpoint and module converters: the reference ``dcls`` package and SNN-delays into dclszoo."""

__all__: list[str] = []
