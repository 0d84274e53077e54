"""Model plugins: models that installed Python packages add to pipewave.

The plugin API. A distribution (an installed package) registers a model under the entry-point
group ``pipewave.models``; the entry point's name is the plugin's name, and it loads to a class::

    # the plugin's pyproject.toml
    [project.entry-points."pipewave.models"]
    mixer = "pipewave_mixer:MixerModel"

The class is a subclass of ``pipewave.workers.contract.PipelineModel`` (layers, a loss, see the
contract's docstring) with a class attribute ``config_model``: a pydantic ``BaseModel`` class that
validates the job spec's ``model.config`` (``settings.options["config"]``). It must forbid unknown
fields (``model_config = ConfigDict(extra="forbid", strict=True)``) and bound every number: the
config comes over REST, from anyone holding the token. The first line of the class's docstring is
the plugin's description in ``GET /api/v1/models``.

pipewave builds the model as ``cls(settings)``, where ``settings.options`` is ``{"kind":
"plugin", "name": NAME, "config": CONFIG}`` and CONFIG has passed ``config_model``: the class
reads its config with ``config_model.model_validate(options["config"])`` (defaults filled in).
``make_layer(i)`` runs inside an RNG seeded from (seed, i) and on the meta device for the
planner's traces, so it draws its initialisation from the global torch RNG and allocates nothing
else. A config with an int ``seq_len`` field fixes the model's sequence length.

A job spec names a plugin, it never names code: a request's name is checked against a strict
pattern, then looked up among the installed entry points of this group by equality, and only the
entry point found is loaded. Nothing else a request says is imported.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import inspect
import logging
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipewave.workers.contract import ModelSettings, PipelineModel

logger = logging.getLogger(__name__)

GROUP = "pipewave.models"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # (the job spec's PluginSpec.name too)


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin as the API lists it; ``error`` says why one that is installed does not
    load (then ``config_schema`` is empty)."""

    name: str
    distribution: str
    version: str
    config_schema: dict[str, Any]
    description: str
    error: str | None = None


@functools.cache
def _entry_points() -> dict[str, list[md.EntryPoint]]:
    """The group's entry points, read once per process (scanning every installed distribution
    takes milliseconds, and specs are validated often): restart after installing a plugin."""
    found: dict[str, list[md.EntryPoint]] = {}
    for ep in md.entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _distribution(ep: md.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def _load(name: str, ep: md.EntryPoint) -> type[PipelineModel]:
    """The entry point's class, checked; one readable line when it is no model plugin."""
    dist, _ = _distribution(ep)
    where = f"model plugin {name!r} (from {dist})"
    try:
        cls = ep.load()
    except Exception as err:  # the plugin's own import error, whatever it is
        raise ValueError(f"{where} does not load: {type(err).__name__}: {_first_line(err)}") from None
    if not (inspect.isclass(cls) and issubclass(cls, PipelineModel)):
        raise ValueError(f"{where} is not a subclass of pipewave.workers.contract.PipelineModel")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ValueError(f"{where} leaves abstract methods undefined: {missing}")
    config = getattr(cls, "config_model", None)
    if not (inspect.isclass(config) and issubclass(config, BaseModel)):
        raise ValueError(f"{where} has no config_model (a pydantic BaseModel class)")
    if config.model_config.get("extra") != "forbid":
        raise ValueError(f"{where}: its config_model must forbid unknown fields (extra='forbid')")
    return cls


def plugin_class(name: str) -> type[PipelineModel]:
    """The class of the installed plugin ``name``; ValueError (one line) when there is none."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"invalid model plugin name {name!r}: up to 64 letters, digits, '.', '_' "
                         "and '-', starting with a letter or digit")
    found = _entry_points()
    eps = found.get(name)
    if not eps:
        have = ", ".join(sorted(found)) or "none"
        raise ValueError(f"model plugin {name!r} is not installed (installed: {have})")
    dists = sorted({_distribution(ep)[0] for ep in eps})
    if len(dists) > 1:
        raise ValueError(f"model plugin {name!r} is registered by several distributions: "
                         f"{', '.join(dists)}")
    return _load(name, eps[0])


def installed_plugins() -> dict[str, PluginInfo]:
    """Every plugin installed, by name (one that does not load comes with its ``error``)."""
    out: dict[str, PluginInfo] = {}
    for name, eps in sorted(_entry_points().items()):
        dist, version = _distribution(eps[0])
        try:
            cls = plugin_class(name)
        except ValueError as err:
            logger.warning("%s", err)
            out[name] = PluginInfo(name, dist, version, {}, "", error=str(err))
            continue
        schema = cls.config_model.model_json_schema()  # type: ignore[attr-defined]
        out[name] = PluginInfo(name, dist, version, schema, _description(cls))
    return out


def validate_plugin_config(name: str, config: Any) -> dict[str, Any]:
    """``config`` validated by the plugin's ``config_model``, as JSON data with its defaults
    filled in; ValueError (one line, e.g. "model.config.depth: Input should be ...") otherwise."""
    cls = plugin_class(name)
    model: type[BaseModel] = cls.config_model  # type: ignore[attr-defined]
    try:
        return model.model_validate({} if config is None else config).model_dump(mode="json")
    except ValidationError as err:
        raise ValueError(_one_line(err, "model.config")) from None


def plugin_model(settings: ModelSettings) -> PipelineModel:
    """The model of a ``kind: plugin`` settings (``pipewave.workers.models.model_for`` calls it)."""
    options = settings.options
    name = options.get("name")
    if not isinstance(name, str):
        raise ValueError(f"a plugin model needs the plugin's name, got {name!r}")
    cls = plugin_class(name)
    validate_plugin_config(name, options.get("config"))
    model = cls(settings)
    model.kind = "plugin"
    dist = _distribution(_entry_points()[name][0])[0]
    model.architecture = f"{cls.architecture or name} (plugin {dist})"
    return model


def _description(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _one_line(err: ValidationError, prefix: str) -> str:
    parts = []
    for e in err.errors():
        where = ".".join([prefix, *(str(p) for p in e["loc"])])
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
