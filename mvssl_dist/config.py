"""Pre-training configuration: YAML defaults + ``key=value`` overrides, validated before any worker starts.

Every key has a default here (the reference released no training configs; these are ours and
the per-method YAML files in ``configs/`` say why). An unknown key, a value of the wrong type
or a bad method name is a :class:`ConfigError` whose one-line message names the field.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import json
import operator
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, dict[str, Any]] = {
    "method": {
        "name": "contrastive",
        "options": {},  # passed to the method's constructor (e.g. temperature, off_coef)
    },
    "data": {
        "path": None,  # DATASET_DIR written by `mvssl ingest` (required)
        "n_views": 2,
        "segment_s": 4.0,
        "min_gap_s": 4.0,
        "pairs_per_track": 1,
        "augment": [],  # list (all views) or {view index: list}; see mvssl_dist.views.augment
        "augment_on": "device",  # "device": inside the step on the training device; "workers": on view workers
        "batch_size": 64,  # global batch (tracks per step), split over the training workers
        "view_cpus": 0.5,  # CPUs per views task
        "shuffle_buffer": 256,  # rows of local shuffle in each training worker
        "seed": 0,
    },
    "train": {
        "epochs": 100,
        "max_steps": 0,  # > 0: stop after this many steps (overrides epochs for the schedules)
        "lr": 1e-3,
        "min_lr": 1e-7,
        "warmup_epochs": 10,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        # BYOL/clustering teacher: cosine from this to 1.0 over the run (DINO's schedule, which the
        # reference's get_network_momentum describes; its default stretches the cosine over 999
        # epochs whatever the run's length, holding ~0.996 through 100, and its configs are unreleased)
        "ema_momentum": 0.996,
        "teacher_temp_warmup_epochs": 10,
        "grad_clip": 0.0,  # 0: off
        "num_workers": 2,
        "use_gpu": False,
        "cpus_per_worker": 0.0,  # 0: sized automatically so the views tasks always get a CPU
        "bf16": True,  # GPU only
        "channels_last": True,  # GPU only
        "compile": False,  # GPU only
        # CPU workers: BatchNorm over the global batch too (GPUs always use SyncBatchNorm). Off by
        # default: through gloo it took 2.0-2.3x the step time on 2 cores, and did not improve the probes.
        "cpu_sync_batchnorm": False,
        "seed": 0,
        # true: the views reach the workers in one fixed order (Ray Data's preserve_order), so a run
        # repeated with the same config, seed and cluster shape trains on the same batches; on CPU
        # workers it ends with bit-identical weights (on GPU, cuDNN's deterministic kernels too).
        # Off by default: an ordered stream waits for its slowest views task.
        "deterministic": False,
        "checkpoint_every": 200,
        "num_to_keep": 2,
        "max_failures": 1,
        "storage_path": "mvssl_runs",
        "log_every": 10,
        "collapse_std": 1e-4,  # embedding std below this ...
        "collapse_rank": 1.5,  # ... or effective rank below this ...
        "collapse_patience": 50,  # ... for this many consecutive steps: collapsed
        "stop_on_collapse": False,
        # > 0: stop after this many minutes of the training loop (every worker at the same step),
        # then checkpoint and register that step, as when max_steps is reached. For a time box such
        # as the quickstart's.
        "max_minutes": 0.0,
        # With max_minutes: once a quarter of it has passed, the steps that fit in the rest at the
        # pace kept since a tenth of it become the last step (never more than max_steps / epochs),
        # so the learning rate and the other schedules end inside the box; at a half and three
        # quarters the fit is made again and may only bring the last step forward. false: the
        # schedules follow max_steps / epochs and the box only stops the run.
        "fit_to_max_minutes": True,
    },
    "tracking": {
        "uri": None,  # MLFLOW_TRACKING_URI or a local SQLite store under the working directory
        "experiment": "mvssl-pretrain",
        "register_as": None,  # default mvssl-<method>
        "run_name": None,
    },
}
# Keys whose value is free-form (not checked key by key).
FREE_FORM = {("method", "options"), ("data", "augment")}
CHOICES = {("data", "augment_on"): ("device", "workers")}
# Text fields with a form, checked before anything runs (MLflow refused a bad name only when it
# registered, after the whole pre-training run).
PATTERNS = {("tracking", "register_as"): (r"[^/:]+", "a registered model name, not empty, without '/' or ':'")}
# Numeric ranges, checked with the types: a value outside them used to reach the workers, where it
# hung the loop (train.max_steps=-5) or failed after Ray Train's start-up (data.segment_s=2).
BOUNDS: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {
    ("data", "n_views"): ((">=", 2),),
    ("data", "segment_s"): (("==", 4.0),),
    ("data", "min_gap_s"): ((">=", 0),),
    ("data", "pairs_per_track"): ((">=", 1),),
    ("data", "batch_size"): ((">=", 1),),
    ("data", "view_cpus"): ((">", 0),),
    ("data", "shuffle_buffer"): ((">=", 0),),
    ("train", "epochs"): ((">=", 1),),
    ("train", "max_steps"): ((">=", 0),),
    ("train", "lr"): ((">", 0),),
    ("train", "min_lr"): ((">=", 0),),
    ("train", "warmup_epochs"): ((">=", 0),),
    ("train", "weight_decay"): ((">=", 0),),
    ("train", "weight_decay_end"): ((">=", 0),),
    ("train", "ema_momentum"): ((">=", 0), ("<=", 1)),
    ("train", "teacher_temp_warmup_epochs"): ((">=", 0),),
    ("train", "grad_clip"): ((">=", 0),),
    ("train", "num_workers"): ((">=", 1),),
    ("train", "cpus_per_worker"): ((">=", 0),),
    ("train", "checkpoint_every"): ((">=", 1),),
    ("train", "num_to_keep"): ((">=", 1),),
    ("train", "max_failures"): ((">=", -1),),
    ("train", "log_every"): ((">=", 1),),
    ("train", "collapse_std"): ((">=", 0),),
    ("train", "collapse_rank"): ((">=", 0),),
    ("train", "collapse_patience"): ((">=", 1),),
    ("train", "max_minutes"): ((">=", 0),),
}
# What a special value means, added to the refusal.
MEANINGS = {
    ("data", "segment_s"): "the backbone's attention pooling is fixed to 4 s segments",
    ("train", "max_steps"): "0: run train.epochs",
    ("train", "grad_clip"): "0: off",
    ("train", "cpus_per_worker"): "0: sized automatically",
    ("train", "max_failures"): "-1: retry for ever",
    ("train", "max_minutes"): "0: no time limit",
}
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "==": operator.eq}


class ConfigError(ValueError):
    """A configuration problem, named by its dotted field."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-4`` is a number (YAML 1.2), not the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str | bytes) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _is_text_field(section: str, key: str) -> bool:
    default = DEFAULTS.get(section, {}).get(key, 0)
    return (section, key) not in FREE_FORM and (default is None or isinstance(default, str))


def _check(section: str, key: str, value: Any, default: Any) -> Any:
    field = f"{section}.{key}"
    if (section, key) in FREE_FORM:
        if not isinstance(value, (Mapping, list)) and value is not None:
            raise ConfigError(f"config: {field} must be a mapping or list, got {type(value).__name__}")
        return value or default
    if default is None:  # an optional text field
        return typed_option(f"config: {field}", value, str | None)
    value = typed_option(f"config: {field}", value, type(default))
    if (section, key) in CHOICES and value not in CHOICES[(section, key)]:
        raise ConfigError(f"config: {field} must be one of {CHOICES[(section, key)]}, got {value!r}")
    if (section, key) in BOUNDS:
        check_bounds(section, key, value)
    return value


def check_bounds(section: str, key: str, value: float) -> None:
    meaning = f" ({MEANINGS[(section, key)]})" if (section, key) in MEANINGS else ""
    within(f"config: {section}.{key}", value, BOUNDS[(section, key)], meaning)


def within(field: str, value: float, bounds: tuple[tuple[str, float], ...], meaning: str = "") -> None:
    """Refuse ``value`` unless it meets every ``(op, bound)`` of ``bounds``, naming ``field``."""
    for op, bound in bounds:
        if not COMPARE[op](value, bound):
            must = f"{bound:g}" if op == "==" else f"{op} {bound:g}"
            raise ConfigError(f"{field} must be {must}, got {value!r}{meaning}")


def typed_option(field: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against a constructor's or function's annotation (``float``, ``int``,
    ``bool``, ``str``, ``tuple[int, ...]``, ``X | None``); numbers become floats where a float is
    wanted and width tuples stay lists (the config is YAML). Other annotations pass it through."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and len(args) < len(typing.get_args(annotation)):
            return None
        return typed_option(field, value, args[0]) if len(args) == 1 else value
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{field} must be true or false, got {value!r}")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field} must be a number, got {value!r}")
        return float(value)
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{field} must be a string, got {value!r}")
    if typing.get_origin(annotation) is tuple:
        widths = isinstance(value, (list, tuple)) and value
        if not widths or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"{field} must be a list of positive integers, got {value!r}")
        return list(value)
    return value


def typed_options(where: str, owner: str, options: Mapping, func: Any, skip: tuple[str, ...] = ("self",)) -> dict:
    """Each of ``options`` checked against ``func``'s parameter of that name (see ``typed_option``);
    a name it does not take is refused, listing those it does. ``owner`` names ``func`` in errors."""
    params = inspect.signature(func, eval_str=True).parameters
    known = [k for k in params if k not in skip]
    checked = {}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: not an option of {owner} (options: {', '.join(known) or 'none'})")
        checked[key] = typed_option(f"{where}.{key}", value, params[key].annotation)
    return checked


def merge(base: dict, update: Mapping, where: str = "") -> dict:
    """Merge ``update`` into a copy of ``base``, refusing keys the defaults do not have."""
    out = copy.deepcopy(base)
    for section, values in update.items():
        if section not in DEFAULTS:
            raise ConfigError(f"config: unknown section '{where}{section}' (known: {', '.join(DEFAULTS)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config: section '{section}' must be a mapping")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"config: unknown key '{section}.{key}'{_suggestion(section, key)}")
            out[section][key] = _check(section, key, value, DEFAULTS[section][key])
    return out


def _suggestion(section: str, key: str) -> str:
    """``" (did you mean 'data.batch_size'?)"`` for a key of another section or a near miss; else ``""``."""
    elsewhere = [f"{other}.{key}" for other in DEFAULTS if key in DEFAULTS[other]]
    near = [f"{section}.{k}" for k in difflib.get_close_matches(key, list(DEFAULTS[section]), n=1, cutoff=0.75)]
    close = elsewhere or near
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text:
        raise ConfigError(f"config: override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) < 2:
        raise ConfigError(f"config: override '{text}' must name section.key")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"config: cannot parse the value of {dotted}: {err}") from None
    if len(parts) == 2 and value is not None and not isinstance(value, str) and _is_text_field(*parts):
        value = raw.strip()  # a name such as tracking.experiment=2024 stays the text it was typed as
    if len(parts) > 2:  # e.g. method.options.temperature=0.2
        for part in reversed(parts[2:]):
            value = {part: value}
    return parts[0], parts[1], value


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Mapping | None = None) -> dict:
    """Defaults (or ``base``, e.g. a stopped run's config) <- YAML file <- ``key=value`` overrides; validated."""
    config = merge(DEFAULTS, base) if base is not None else copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: {path}: {'a folder, not a YAML file' if path.is_dir() else 'no such file'}")
        try:
            loaded = _load_yaml(path.read_bytes()) or {}  # bytes: YAML says what is not UTF-8
        except yaml.YAMLError as err:
            raise ConfigError(f"config: {path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config: {path}: the top level must be a mapping")
        config = merge(config, loaded)
    for text in overrides:
        section, key, value = parse_override(text)
        if section in DEFAULTS and key in DEFAULTS[section] and (section, key) in FREE_FORM and isinstance(value, dict):
            current = dict(config[section][key] or {})
            current.update(value)
            value = current
        config = merge(config, {section: {key: value}})
    check_patterns(config)
    return config


def check_patterns(config: Mapping) -> None:
    """The text fields with a form, checked once every layer is merged (a stopped run's saved
    value may be corrected by an override when it is resumed)."""
    for (section, key), (pattern, meaning) in PATTERNS.items():
        value = config[section][key]
        if value is not None and not re.fullmatch(pattern, value):
            raise ConfigError(f"config: {section}.{key} {value!r}: must be {meaning}")


def recorded_config(cfg: Mapping) -> dict[str, Any]:
    """The sections a run writes down (MLflow params, ``config.yaml``, checkpoints,
    ``mvssl_run.json``), with any password in ``tracking.uri`` cut: a database URI such as
    ``postgresql://user:pw@host/db`` would otherwise be shown to everyone who can browse runs."""
    from mvssl_dist.tracking import without_password

    out = {k: cfg[k] for k in ("method", "data", "train", "tracking")}
    if out["tracking"].get("uri"):
        out["tracking"] = {**out["tracking"], "uri": without_password(out["tracking"]["uri"])}
    return out


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}`` for MLflow params."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return flat


def config_hash(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
