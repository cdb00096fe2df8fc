"""What `ray up CONFIG` would run on a node, without a cloud: Ray's own ``NodeUpdater`` sets up one
node of the config through its real Docker command runner, over an SSH whose commands are only
recorded. Used by tests/test_deploy.py to check where (VM or container) and in what order Ray runs
our commands. It drives Ray's private autoscaler modules (unchanged in shape for years); if a Ray
release moves them, this file is what to update."""

from __future__ import annotations

import subprocess
import types
from dataclasses import dataclass
from pathlib import Path

import yaml
from ray.autoscaler._private.updater import NodeUpdater
from ray.autoscaler._private.util import hash_runtime_conf, prepare_config, validate_config
from ray.autoscaler.node_provider import NodeProvider

HOME = "/root"  # the image's $HOME, as `docker inspect` / `printenv HOME` would report it


@dataclass
class Command:
    text: str  # the command as the node's shell receives it
    in_container: bool  # run through `docker exec`, not on the VM


def load(path: Path) -> dict:
    """The config as `ray up` reads it: defaults filled in, then checked against Ray's schema."""
    cfg = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(cfg)
    return cfg


def node_setup(cfg: dict, head: bool = True) -> list[Command]:
    """Every command Ray's updater sends to a new head (or worker) node, in order."""
    sent: list[Command] = []

    def record(cmd, **_):
        text = cmd[-1] if isinstance(cmd, list) else cmd  # the remote command after `ssh ... host`
        if "rsync" not in str(cmd[0] if isinstance(cmd, list) else cmd):
            sent.append(Command(text, "docker exec" in text))
        if "json .Config.Env" in text:
            return f'["HOME={HOME}"]'.encode()
        if "printenv HOME" in text:
            return HOME.encode()
        if "command -v docker" in text:
            return b"/usr/bin/docker"
        return b"false" if "State.Running" in text else b""

    runner = types.SimpleNamespace(
        check_call=lambda cmd, **kw: record(cmd) and 0,
        check_output=record,
        DEVNULL=subprocess.DEVNULL,
        PIPE=subprocess.PIPE,
        STDOUT=subprocess.STDOUT,
        CalledProcessError=subprocess.CalledProcessError,
    )
    kind = "head" if head else "worker"
    runtime_hash, mounts_hash = hash_runtime_conf(cfg["file_mounts"], None, cfg)
    updater = NodeUpdater(
        f"i-{kind}",
        cfg["provider"],
        RecordingProvider(cfg["cluster_name"]),
        cfg["auth"],
        cfg["cluster_name"],
        cfg["file_mounts"],
        cfg["initialization_commands"],
        cfg["setup_commands"] + cfg[f"{kind}_setup_commands"],
        cfg[f"{kind}_start_ray_commands"],
        runtime_hash,
        mounts_hash,
        is_head_node=head,
        process_runner=runner,
        docker_config=cfg["docker"],
    )
    updater.do_update()
    return sent


class RecordingProvider(NodeProvider):
    """One running node at 10.0.0.1 that keeps the tags the updater sets."""

    def __init__(self, cluster_name: str) -> None:
        super().__init__({}, cluster_name)
        self.tags: dict = {}

    def external_ip(self, node_id):
        return "10.0.0.1"

    def internal_ip(self, node_id):
        return "10.0.0.1"

    def node_tags(self, node_id):
        return self.tags

    def set_node_tags(self, node_id, tags):
        self.tags.update(tags)

    def is_running(self, node_id):
        return True

    def is_terminated(self, node_id):
        return False
