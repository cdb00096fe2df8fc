"""``load_backbone``: one entry point for every place a backbone's weights can live."""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from mvssl_dist.models.backbone import Backbone

BACKBONE_FORMAT = "mvssl-backbone"
# Where checkpoints commonly keep a state dict: ours and the release's, Lightning's, PyTorch's
# tutorials', a student/teacher pair's.
CONTAINER_KEYS = ("backbone", "model", "state_dict", "model_state_dict", "student")


class WeightsError(ValueError):
    """Weights that cannot be loaded into a :class:`Backbone`; the message names file and key."""


@functools.cache
def backbone_keys() -> frozenset[str]:
    return frozenset(Backbone().state_dict())


def prefix_counts(keys: Iterable[str]) -> Counter:
    """How many backbone keys each prefix carries: each key's longest ending that is a backbone key."""
    counts, known = Counter(), backbone_keys()
    for key in keys:
        parts = key.split(".")
        start = next((i for i in range(len(parts)) if ".".join(parts[i:]) in known), None)
        if start is not None:
            counts["".join(part + "." for part in parts[:start])] += 1
    return counts


def backbone_prefix(keys: list[str], counts: Counter) -> str:
    """The prefix the backbone's keys carry among ``keys`` (``counts``: their
    :func:`prefix_counts`): "" for a bare backbone, "module." for one saved from DDP,
    "module.backbone." in a release file, "student.backbone." in our SSL models. Of a student and
    a teacher (the release's BYOL and clustering files), the student's."""
    if not counts:
        raise WeightsError(
            f"no backbone keys (such as 'embedding.conv1.weight'); the first keys: {', '.join(keys[:3])}"
        )
    found = [prefix for prefix, n in counts.items() if 2 * n > max(counts.values())]
    if len(found) > 1:
        found = [prefix for prefix in found if "teacher" not in prefix] or found
    if len(found) > 1:
        raise WeightsError(f"{len(found)} backbones (key prefixes {', '.join(found)}): save the one to load on its own")
    return found[0]


def extract_backbone_state(obj: object) -> dict:
    """Find the backbone state dict in any supported checkpoint layout: ours (under "backbone"),
    a training checkpoint's and the release's (the SSL model under "model"), or a state dict with
    any prefix, alone or in one of ``CONTAINER_KEYS``."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"expected a dict, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    inner = [obj[key] for key in CONTAINER_KEYS if isinstance(obj.get(key), Mapping) and obj[key]]
    counts = prefix_counts(tensors)
    if tensors and (counts or not inner):  # a stray tensor beside a container is not it
        prefix = backbone_prefix(list(tensors), counts)
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if inner:
        return extract_backbone_state(inner[0])
    raise WeightsError(f"unrecognised checkpoint layout (top-level keys: {sorted(map(str, obj))[:8]})")


def check_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict key and shape check whose error names the first offending key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise WeightsError(f"missing backbone key '{missing[0]}' ({len(missing)} missing in all)")
    if unexpected:
        raise WeightsError(f"unexpected backbone key '{unexpected[0]}' ({len(unexpected)} unexpected in all)")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"shape mismatch for backbone key '{key}': file has {list(state[key].shape)}, "
                f"model expects {list(value.shape)}"
            )


def backbone_from_state(state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu") -> Backbone:
    model = Backbone()
    check_state(model, state)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def names_random(source: str | os.PathLike) -> bool:
    """Whether ``source`` asks for an untrained backbone (``random`` or ``random:SEED``)."""
    text = os.fspath(source)
    return isinstance(text, str) and (text == "random" or text.startswith("random:"))


def absolute_source(source: str) -> str:
    """``source`` as :func:`load_backbone` takes it, a weights file or checkpoint folder made
    absolute: Ray's workers on a running cluster do not share the driver's working folder."""
    from mvssl_dist.shards.uris import local_dir

    if names_random(source) or uri_scheme(source):
        return source
    return str(local_dir(source))


def uri_scheme(source: str) -> str | None:
    """The scheme of ``source`` when it is a URI (``models``, ``runs``, ``s3``, ``file``…); ``None``
    for a path (a Windows drive letter is not a scheme)."""
    match = re.match(r"([A-Za-z][\w+.-]+):/", source)
    return match[1].lower() if match else None


def refuse_uri(text: str) -> None:
    """Any URI but ``models:/`` refused in one line: the loader reads local files and the registry."""
    scheme = uri_scheme(text)
    hint = (
        "give its path instead"
        if scheme == "file"
        else f"download it first (`mlflow artifacts download -u {text}` fetches any MLflow artifact)"
    )
    raise WeightsError(
        f"{text}: weights are read from a local file or checkpoint folder, models:/NAME/VERSION, "
        f"models:/NAME@ALIAS or random[:SEED], not from {scheme}: URIs; {hint}"
    )


def load_backbone(source: str | os.PathLike, device: str | torch.device = "cpu") -> Backbone:
    """Load a :class:`Backbone` in eval mode from ``source``.

    ``source`` may be a reference release file (any of the five layouts), one of our own
    backbone files (:func:`save_backbone`), a training checkpoint, an MLflow
    ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` URI, or ``random[:SEED]`` (an
    untrained, seeded backbone: the baseline). Loading is strict.
    """
    text = os.fspath(source)
    if names_random(text):
        # A seeded, untrained backbone: for smoke runs and as the baseline probes compare against.
        seed = text.partition(":")[2] or "0"
        if not seed.isdigit():
            raise WeightsError(f"{text}: the seed after 'random:' must be a whole number >= 0, such as random:0")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return Backbone().to(device).eval()
    if isinstance(text, str) and text.startswith("models:/"):
        from mvssl_dist.tracking import download_model_weights

        text = download_model_weights(text)
    elif isinstance(text, str) and uri_scheme(text):
        refuse_uri(text)
    path = Path(text)
    if path.is_dir() and (path / "state.pt").is_file():  # a Ray Train checkpoint directory
        path = path / "state.pt"
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start != b"PK\x03\x04" and not start.startswith(b"\x80"):  # torch.save's zip, or an old pickle
        raise WeightsError(f"{path}: not a torch checkpoint (neither the zip archive torch.save writes nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: not a readable torch checkpoint ({load_failure(err)})") from None
    try:
        return backbone_from_state(extract_backbone_state(obj), device)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None


def load_failure(err: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused a file. Its own message runs to
    paragraphs and suggests ``weights_only=False``, which would let the file run code."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        return f"the weights-only reader, which loads tensors and never code, refused it: {reason}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}"


def save_backbone(model: Backbone, path: str | os.PathLike, **meta: object) -> Path:
    """Write our own backbone file: ``{"format", "version", "backbone", "meta"}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": BACKBONE_FORMAT, "version": 1, "backbone": state, "meta": dict(meta)}, path)
    return path
