from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mvssl_dist.config import load_config
from mvssl_dist.methods import build_method
from mvssl_dist.models import (
    SEGMENT_SAMPLES,
    Backbone,
    Head,
    WeightsError,
    calibrate_batchnorm,
    load_backbone,
    save_backbone,
)
from mvssl_dist.models.loading import absolute_source
from mvssl_dist.train.loop import save_state

# Prefixes of the backbone inside the reference release files, most specific first
# ("module.backbone." is a substring of "student.module.backbone.").
RELEASE_PREFIXES = ("student.module.backbone.", "module.backbone.")


def release_rows(seed_compat: Path) -> dict[str, dict[str, list[int]]]:
    rows: dict[str, dict[str, list[int]]] = {}
    with open(seed_compat / "release_state_dict_keys.tsv") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            shape = [int(x) for x in row["shape"].strip("[]").split(",") if x.strip()]
            rows.setdefault(row["format"], {})[row["key"]] = shape
    return rows


def test_parameter_count_is_the_reference_one():
    assert sum(p.numel() for p in Backbone().parameters()) == 2_800_392


def test_fixture_reproduces_reference_melspec_and_embedding(seed_compat):
    model = load_backbone(seed_compat / "contrastive_backbone_only.pt")
    assert not model.training
    ref = torch.load(seed_compat / "reference_io.pt", weights_only=True)
    with torch.no_grad():
        for wave in (ref["input"], ref["input"][..., 0]):  # reference layout, then ours
            torch.testing.assert_close(model.melspec(wave), ref["melspec_db"], atol=1e-4, rtol=0)
            torch.testing.assert_close(model(wave), ref["embedding"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["contrastive", "byol", "clustering", "barlow_twins", "feature_stats"])
def test_backbone_keys_and_shapes_equal_release(seed_compat, fmt):
    rows = release_rows(seed_compat)[fmt]
    prefix = next(p for p in RELEASE_PREFIXES if any(k.startswith(p) for k in rows))
    release = {k[len(prefix) :]: v for k, v in rows.items() if k.startswith(prefix)}
    ours = {k: list(v.shape) for k, v in Backbone().state_dict().items()}
    assert ours == release


def test_load_detects_student_prefix_and_round_trips(tmp_path):
    model = Backbone().eval()
    state = {f"student.module.backbone.{k}": v for k, v in model.state_dict().items()}
    state["teacher.backbone.embedding.conv1.weight"] = torch.zeros(8, 1, 3, 3)  # must be ignored
    torch.save({"pretext": "byol", "epoch": 3, "model": state}, tmp_path / "byol.pt")
    loaded = load_backbone(tmp_path / "byol.pt")
    x = torch.randn(2, 64000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    save_backbone(loaded, tmp_path / "ours.pt", note="x")
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(tmp_path / "ours.pt")(x), model(x))


def test_a_backbone_is_found_in_the_layouts_people_save(tmp_path):
    """A bare state dict, one saved from DDP (`module.`), one under the keys Lightning and PyTorch's
    tutorials use, our SSL model's state and a pre-training checkpoint (student and teacher: the
    student's). Each used to fail, the DDP one with "missing backbone key 'spec…' (341 missing)"."""
    model = Backbone().eval()
    state = model.state_dict()
    method = build_method("clustering")  # a student and a teacher backbone, not the same weights
    with torch.no_grad():
        next(method.teacher.parameters()).add_(1.0)
    save_state(tmp_path, method, torch.optim.SGD(method.parameters(), lr=0.1), 3, 1, load_config(None), {})
    layouts = {
        "bare": state,
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "lightning": {"state_dict": {f"model.backbone.{k}": v for k, v in state.items()}, "epoch": 2},
        "tutorial": {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}},
        "beside_a_tensor": {"model": state, "best_score": torch.tensor(0.9)},
    }
    x = torch.randn(2, 64000)
    with torch.no_grad():
        for name, obj in layouts.items():
            torch.save(obj, tmp_path / f"{name}.pt")
            torch.testing.assert_close(load_backbone(tmp_path / f"{name}.pt")(x), model(x), msg=name)
        method.eval()
        for source in (tmp_path, tmp_path / "state.pt"):  # a checkpoint folder, or its file
            torch.testing.assert_close(load_backbone(source)(x), method.student.backbone(x))
    two = {f"a.{k}": v for k, v in state.items()} | {f"b.{k}": v for k, v in state.items()}
    torch.save(two, tmp_path / "two.pt")
    with pytest.raises(WeightsError, match=r"two.pt: 2 backbones \(key prefixes a., b.\): save the one"):
        load_backbone(tmp_path / "two.pt")
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "head.pt")
    with pytest.raises(WeightsError, match="head.pt: no backbone keys .*; the first keys: head.weight"):
        load_backbone(tmp_path / "head.pt")
    torch.save([state], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="list.pt: expected a dict, found list"):
        load_backbone(tmp_path / "list.pt")
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(WeightsError, match=r"none.pt: unrecognised checkpoint layout \(top-level keys: \['epoch'\]\)"):
        load_backbone(tmp_path / "none.pt")


def test_strict_loading_names_the_key(tmp_path):
    state = Backbone().state_dict()
    missing = {k: v for k, v in state.items() if k != "embedding.attnpool.c_proj.bias"}
    torch.save({"model": {f"module.backbone.{k}": v for k, v in missing.items()}}, tmp_path / "m.pt")
    with pytest.raises(WeightsError, match=r"m\.pt: missing backbone key 'embedding\.attnpool\.c_proj\.bias'"):
        load_backbone(tmp_path / "m.pt")
    extra = dict(state, **{"embedding.extra.weight": torch.zeros(1)})
    torch.save({"model": {f"module.backbone.{k}": v for k, v in extra.items()}}, tmp_path / "u.pt")
    with pytest.raises(WeightsError, match="unexpected backbone key 'embedding.extra.weight'"):
        load_backbone(tmp_path / "u.pt")
    bad = dict(state, **{"embedding.conv1.weight": torch.zeros(8, 2, 3, 3)})
    torch.save({"model": {f"module.backbone.{k}": v for k, v in bad.items()}}, tmp_path / "s.pt")
    with pytest.raises(WeightsError, match=r"shape mismatch for backbone key 'embedding\.conv1\.weight'"):
        load_backbone(tmp_path / "s.pt")


def test_bad_weight_files_are_one_clear_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk.pt: not a torch checkpoint \(neither the zip archive"):
        load_backbone(tmp_path / "junk.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(WeightsError, match="cut.pt: not a readable torch checkpoint") as err:
        load_backbone(tmp_path / "cut.pt")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value), err.value  # torch's advice
    torch.save({"model": Backbone().state_dict(), "made_by": Backbone}, tmp_path / "class.pt")  # a class: code
    with pytest.raises(
        WeightsError, match=r"class.pt: .*never code, refused it: Unsupported global: .*Backbone"
    ) as err:
        load_backbone(tmp_path / "class.pt")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value), err.value
    with pytest.raises(WeightsError, match="nope.pt: no such weights file"):
        load_backbone(tmp_path / "nope.pt")
    # An MLflow run's artifact, a bucket, a file URI: each said as such, not "no such weights file"
    # (and `mvssl embed` no longer makes a runs:/ URI a path under the working folder)
    for uri, hint in (
        ("runs:/0123abcd/export/contrastive_release.pt", "download it first .*mlflow artifacts download -u runs:/"),
        ("s3://bucket/w.pt", "download it first"),
        (f"file://{tmp_path}/w.pt", "give its path instead"),
    ):
        scheme = uri.split(":")[0]
        with pytest.raises(WeightsError, match=f"{uri}: weights are read from .*not from {scheme}: URIs; {hint}"):
            load_backbone(uri)
        assert absolute_source(uri) == uri
    assert absolute_source("w.pt") == str(Path("w.pt").resolve())
    for seed in ("abc", "-1", "1.5"):  # int() raised a ValueError traceback from every command
        with pytest.raises(WeightsError, match=f"random:{seed}: the seed after 'random:' must be a whole number"):
            load_backbone(f"random:{seed}")


def test_input_layouts():
    model = Backbone().eval()
    x = torch.randn(3, 64000)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[..., None]))
        assert model(x).shape == (3, 1024)
    with pytest.raises(ValueError, match="Backbone input must be"):
        model(torch.randn(3, 64000, 2))


def test_attention_pool_matches_torch_multihead_attention():
    """Our single-query SDPA pooling equals the full MHA whose first output the reference keeps."""
    model = Backbone().eval()
    pool = model.embedding.attnpool
    feats = torch.randn(2, 512, 4, 3)
    tokens = feats.flatten(2).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + pool.positional_embedding[:, None]
    out, _ = torch.nn.functional.multi_head_attention_forward(
        tokens,
        tokens,
        tokens,
        512,
        8,
        None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        None,
        None,
        False,
        0.0,
        pool.c_proj.weight,
        pool.c_proj.bias,
        training=False,
        need_weights=False,
        use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
    )
    with torch.no_grad():
        torch.testing.assert_close(pool(feats), out[0], atol=1e-5, rtol=1e-5)


def test_head_layout_and_shapes():
    head = Head(1024, [1024, 1024, 2048])
    keys = {k: list(v.shape) for k, v in head.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert keys == {
        "ops.0.weight": [1024, 1024],
        "ops.1.weight": [1024],
        "ops.1.bias": [1024],
        "ops.3.weight": [1024, 1024],
        "ops.4.weight": [1024],
        "ops.4.bias": [1024],
        "ops.6.weight": [2048, 1024],
    }
    assert head(torch.randn(4, 1024)).shape == (4, 2048)
    with pytest.raises(ValueError):
        Head(8, [])


def test_front_end_equals_torchaudio_transforms_it_holds():
    """Our STFT path (traceable by torch.compile) computes what torchaudio's MelSpectrogram does."""
    torch.manual_seed(0)
    front = Backbone().spec
    wave = torch.cat([torch.randn(1, 64000) * 0.3, torch.randn(1, 64000) * 1e-4, torch.zeros(1, 64000)])
    assert torch.allclose(front.power(wave), front.spec.spectrogram(wave), rtol=1e-5, atol=1e-10)
    theirs = front.amplitude_to_db(front.spec(wave.unsqueeze(1)))
    assert torch.allclose(front(wave), theirs, atol=1e-4)


def test_calibrated_batchnorm_holds_the_data_statistics_and_keeps_the_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.BatchNorm1d(4))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(5)]
    assert calibrate_batchnorm(net, batches) is net and not net.training
    first = torch.stack([net[0](b) for b in batches])  # [batches, 8, 4]: what the first BatchNorm saw
    # momentum=None: the plain average of the per-batch mean and unbiased variance
    torch.testing.assert_close(net[1].running_mean, first.mean(1).mean(0))
    torch.testing.assert_close(net[1].running_var, first.var(1, unbiased=True).mean(0))
    assert net[1].momentum == 0.1 and int(net[1].num_batches_tracked) == 5
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    # the same batches in another order give the same buffers
    again = calibrate_batchnorm(net, batches[::-1])
    torch.testing.assert_close(again[3].running_var, net[3].running_var)
    # a fresh backbone's buffers are the identity placeholders; calibrated ones are not
    backbone = Backbone()
    assert float(backbone.embedding.bn1.running_var.sum()) == backbone.embedding.bn1.num_features
    calibrate_batchnorm(backbone, [torch.randn(2, SEGMENT_SAMPLES) * 0.1])
    assert not torch.allclose(backbone.embedding.bn1.running_var, torch.ones(backbone.embedding.bn1.num_features))
