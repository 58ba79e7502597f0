"""affectedit: edit facial expressions along continuous valence and arousal dials.

Public API (imported lazily so that `import affectedit` stays fast):
    affectedit.Editor          -- Editor.from_pretrained() / .from_checkpoint(path) / .edit(...)
    affectedit.EditConfig      -- how an Editor edits (mode, strength, colour, label_range)
    affectedit.emotion         -- emotion("happy") -> (valence, arousal)
    affectedit.detect_faces    -- faces in a PIL image with box, landmarks and alignment transform
    affectedit.metrics         -- rmse (needs the [eval] extra), ccc, sagr
    affectedit.UserError       -- what goes wrong that the user can fix (a ValueError); its message says what to do

The version is written here only (pyproject.toml reads it). Typed: the package ships ``py.typed``.
"""
from __future__ import annotations

__version__ = "0.2.0"

_LAZY = {
    "Editor": ("affectedit.editor", "Editor"),
    "EditConfig": ("affectedit.edit_settings", "EditConfig"),
    "emotion": ("affectedit.emotions", "emotion"),
    "detect_faces": ("affectedit.faces", "detect_faces"),
    "Config": ("affectedit.config", "Config"),
    "get_config": ("affectedit.config", "get_config"),
    "UserError": ("affectedit.errors", "UserError"),
}

__all__ = ["Config", "EditConfig", "Editor", "UserError", "__version__", "detect_faces", "emotion", "get_config", "metrics"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in ("metrics",):
        import importlib

        return importlib.import_module(f"affectedit.{name}")
    raise AttributeError(f"module 'affectedit' has no attribute {name!r}")
