"""A named-class registry with preset-driven construction (hloc's ``confs`` idea).

Used by the feature extractors and the matchers: a config's ``model`` key selects the
registered class; the other keys are merged over its ``default_conf``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Type, Union

from torch import nn

from .config import load_config, merge


class Registry:
    """Classes registered under names, built from presets in ``configs/<section>/``.

    Args:
        kind: what is registered, for messages ("extractor", "matcher").
        section: the configs/ sub-folder holding the presets.
        default_model: the ``model`` used when a config names none.
    """

    def __init__(self, kind: str, section: str, default_model: str):
        self.kind, self.section, self.default_model = kind, section, default_model
        self._classes: Dict[str, Type] = {}

    def register(self, name: str, base: Type) -> Callable[[Type], Type]:
        """Class decorator adding a subclass of ``base`` under ``name``."""

        def deco(cls: Type) -> Type:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"register_{self.kind}({name!r}) needs a {base.__name__} subclass, got {cls!r}")
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"A {self.kind} named {name!r} is already registered "
                                 f"({self._classes[name].__name__})")
            self._classes[name] = cls
            cls.name = name
            return cls

        return deco

    def names(self) -> List[str]:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def build(self, conf: Union[str, Path, Dict[str, Any]], **overrides: Any):
        """Instantiate from a preset name, a YAML path or a dict (+ overrides merged last)."""
        preset = conf if isinstance(conf, (str, Path)) else None
        cfg = merge(load_config(self.section, conf), overrides)
        model = cfg.pop("model", self.default_model)
        if model not in self._classes:
            raise KeyError(f"Unknown {self.kind} model {model!r} (preset {preset!r}); registered: {self.names()}")
        cfg.setdefault("preset", str(preset) if preset is not None else model)
        return self._classes[model](cfg)


class ConfiguredModule(nn.Module):
    """Base of registered models: ``base_default_conf`` < class ``default_conf`` < user conf
    (unknown keys rejected), then ``_init(conf)``, eval mode, and the configured device."""

    name: str = "base"
    base_default_conf: Dict[str, Any] = {"preset": None, "device": "cpu"}
    default_conf: Dict[str, Any] = {}

    def __init__(self, conf: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        defaults = merge(self.base_default_conf, self.default_conf)
        self.conf = merge(defaults, conf or {}, strict=True)
        if self.conf["preset"] is None:
            self.conf["preset"] = self.name
        self._init(self.conf)
        self.eval()
        self.to(self.conf["device"])

    def _init(self, conf: Dict[str, Any]) -> None:
        """Build the model from the merged conf (subclasses)."""
