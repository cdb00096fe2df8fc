"""The one base class every SSL method builds on: networks, teacher, step, release layout."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from mvssl_dist.losses import effective_rank, embedding_std
from mvssl_dist.models import EMBEDDING_DIM, Backbone, Head


class Network(nn.Module):
    """Backbone + projection head, applied view by view (each view gets its own BN statistics,
    as in the reference).

    ``[views, batch, samples]`` -> (embeddings ``[views, batch, 1024]``, projections ``[views, batch, P]``).
    """

    def __init__(self, head_widths: tuple[int, ...]) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = Head(EMBEDDING_DIM, head_widths)

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = [self.backbone(view) for view in views]
        projections = [self.head(e) for e in embeddings]
        return torch.stack(embeddings), torch.stack(projections)


class ReleaseLayoutError(ValueError):
    """A state dict that does not match a method's release layout; the message names the key."""


class SSLMethod(nn.Module):
    """Base of every method. A subclass sets the class attributes and writes ``compute_loss``.

    ``forward(views, schedule, tracks)`` is the training step's loss: ``views`` is the data's
    ``[batch, views, samples]``, ``schedule`` the values of :class:`Schedules.at` and
    ``tracks`` (optional) the rows' ``[batch]`` int64 track ids (:func:`track_ids`).
    The metrics are detached 0-dim tensors; ``watch=True`` adds the collapse signals
    (``embedding_std``, ``effective_rank``), which the loop asks for on logged steps only.
    """

    name: ClassVar[str]
    release_format: ClassVar[str]
    head_widths: ClassVar[tuple[int, ...]]
    uses_teacher: ClassVar[bool] = False
    ema_buffers: ClassVar[bool] = False  # also EMA the teacher's float buffers (BN statistics)
    # our state-dict prefix -> the release file's prefix
    release_prefixes: ClassVar[dict[str, str]] = {"student.": "module."}

    def __init__(self, head_widths: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.student = Network(tuple(head_widths or self.head_widths))
        self.teacher: Network | None = None
        if self.uses_teacher:
            self.teacher = copy.deepcopy(self.student)
            self.teacher.requires_grad_(False)

    @property
    def backbone(self) -> Backbone:
        return self.student.backbone

    def compute_loss(
        self,
        views: torch.Tensor,
        projections: torch.Tensor,
        schedule: Mapping[str, float],
        tracks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(
        self,
        views: torch.Tensor,
        schedule: Mapping[str, float],
        tracks: torch.Tensor | None = None,
        watch: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = views.transpose(0, 1)  # [B, V, S] -> [V, B, S]
        embeddings, projections = self.student(views)
        loss, metrics = self.compute_loss(views, projections, schedule, tracks)
        metrics["loss"] = loss.detach()
        if watch:
            flat = embeddings.detach().reshape(-1, embeddings.shape[-1])
            metrics["embedding_std"] = embedding_std(flat)
            metrics["effective_rank"] = effective_rank(flat)
        return loss, metrics

    step = forward

    @torch.no_grad()
    def teacher_projections(self, views: torch.Tensor) -> torch.Tensor:
        return self.teacher(views)[1]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` (after each optimizer step)."""
        if self.teacher is None:
            return
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
        if self.ema_buffers:
            for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
                if t.is_floating_point():
                    t.mul_(momentum).add_(s, alpha=1 - momentum)

    # ------------------------------------------------------------------ release layout
    def _release_key(self, key: str) -> str | None:
        for ours, theirs in self.release_prefixes.items():
            if key.startswith(ours):
                return theirs + key[len(ours) :]
        return None  # e.g. the DINO centre: ours, not in the release

    def export_release(self, epoch: int = 0) -> dict:
        """``{"pretext", "epoch", "model"}`` with the release file's keys and shapes."""
        model = {}
        for key, value in self.state_dict().items():
            release_key = self._release_key(key)
            if release_key is not None:
                model[release_key] = value.detach().cpu().clone()
        return {"pretext": self.release_format, "epoch": int(epoch), "model": model}

    def load_release(self, obj: Mapping) -> None:
        """Load a release-layout dict (strict over the release keys; names the first bad key)."""
        given = obj["model"] if "model" in obj else obj
        expected = {rk: k for k in self.state_dict() if (rk := self._release_key(k)) is not None}
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in given if k not in expected]
        if missing or unexpected:
            key = (missing or unexpected)[0]
            what = "missing" if missing else "unexpected"
            raise ReleaseLayoutError(f"{self.release_format} release layout: {what} key '{key}'")
        own = self.state_dict()
        for release_key, ours in expected.items():
            if tuple(given[release_key].shape) != tuple(own[ours].shape):
                raise ReleaseLayoutError(
                    f"{self.release_format} release layout: shape mismatch for '{release_key}': "
                    f"{list(given[release_key].shape)} vs {list(own[ours].shape)}"
                )
        state = dict(own)
        state.update({ours: given[rk] for rk, ours in expected.items()})
        self.load_state_dict(state, strict=True)
