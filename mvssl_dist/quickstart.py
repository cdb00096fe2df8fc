"""``mvssl quickstart``: the whole product on the embedded defaults (local Ray, local MLflow).

Generate a labelled synthetic library (+ broken files) -> ingest -> pre-train contrastive with
2 Ray Train workers -> registered model -> embed the library -> evaluate (and a random
backbone for comparison) -> promote ``champion`` -> a summary saying where to look.
Every stage keeps its output in the working folder; ``quickstart.json`` records what is
done, so a re-run reuses it (and a killed pre-training run resumes from its checkpoint).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODEL_NAME = "mvssl-quickstart"
STATE_FILE = "quickstart.json"
METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # <method>.yaml, the repository's


class QuickstartError(RuntimeError):
    """A stage failed; one line naming it."""


@dataclass
class QuickstartOptions:
    workdir: str = "mvssl-quickstart"
    tracks: int = 120
    minutes: float = 8.0  # the whole run's target; pre-training gets what the other stages leave
    seconds: float = 20.0  # length of each generated track
    steps: int = 0  # > 0: pre-training steps (else sized from --minutes)
    workers: int = 2  # Ray Train workers
    layers: float = 0.0  # > 0: a harder library, with untagged layers that change every section
    unlabelled: int = 0  # more tracks to pre-train on, left out of labels.csv (few labels, much music)
    # the SSL method pre-trained, from configs/<method>.yaml under the quickstart's settings
    method: str = "contrastive"
    ray_address: str | None = None
    # KEY=VALUE pre-training overrides applied after the quickstart's own (e.g. train.use_gpu=true
    # data.batch_size=256 for benchmarks/probe_quality.py on a GPU); not offered by the CLI
    pretrain_overrides: tuple[str, ...] = ()


@dataclass
class QuickstartResult:
    workdir: Path
    state: dict
    stage_seconds: dict = field(default_factory=dict)


class State:
    """``quickstart.json``: what each finished stage produced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, stage: str):
        return self.data.get(stage)

    def set(self, stage: str, value) -> None:
        self.data[stage] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- stages
def make_library(opts: QuickstartOptions, work: Path, say) -> dict:
    from mvssl_dist.library import write_library

    jobs = os.cpu_count() or 1
    write_library(
        work / "library",
        opts.tracks,
        opts.seconds,
        varied=True,
        seed=7,
        broken=True,
        jobs=jobs,
        layers=opts.layers,
        unlabelled=opts.unlabelled,
    )
    say(f"  {opts.tracks} tracks of ~{opts.seconds:g} s in mp3/flac/ogg/wav/m4a + 4 broken files in library/broken")
    if opts.unlabelled:
        say(f"  {opts.unlabelled} more in library/unlabelled, pre-trained on, not in labels.csv")
    labels = str(work / "library" / "labels.csv")
    return {"tracks": opts.tracks, "labels": labels, "layers": opts.layers, "unlabelled": opts.unlabelled}


def trained_method(state: dict) -> str | None:
    """The method a workdir's pre-training stage uses (``None`` before that stage began); workdirs
    made before methods were recorded pre-trained contrastive."""
    return state.get("pretrain_method") or ("contrastive" if state.get("pretrain_budget") else None)


def check_reuse(opts: QuickstartOptions, state: State, work: Path) -> None:
    """Refuse options that disagree with what ``work`` already holds (it would be reused)."""
    trained = trained_method(state.data)
    if trained is not None and trained != opts.method:
        raise QuickstartError(
            f"--method {opts.method}: {work} holds a model pre-trained with {trained}; "
            f"continue it with --method {trained}, or use another --workdir"
        )
    made = state.get("library")
    if made is None:
        return
    for option, asked, had in (
        ("--tracks", opts.tracks, made["tracks"]),
        ("--layers", opts.layers, made.get("layers", 0.0)),
        ("--unlabelled", opts.unlabelled, made.get("unlabelled", 0)),
    ):
        if asked != had:
            raise QuickstartError(
                f"{option} {asked:g}: {work} holds a library made with {option} {had:g}; use another --workdir"
            )


def ingest_library(opts: QuickstartOptions, work: Path, say) -> dict:
    from mvssl_dist.shards import IngestOptions, ingest

    summary = ingest(
        IngestOptions(
            sources=[str(work / "library")],
            out=str(work / "dataset"),
            ray_address=opts.ray_address,
            shard_target_mb=8.0,  # ~10 shards: parallel decoding now, parallel view tasks in training
        )
    )
    say(f"  {summary.tracks} tracks ({summary.hours * 60:.1f} min of audio) in {work / 'dataset'}")
    say(f"  {summary.rejects} rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.by_reason.items())))
    return {"tracks": summary.tracks, "rejects": summary.rejects, "by_reason": summary.by_reason}


MAX_STEPS = 400  # what the quickstart plans; the time box fits it to this machine's pace
MIN_BOX_S = 60.0  # the shortest training loop the quickstart runs, whatever --minutes says
LATER_STAGES_S = 150 + 45  # embedding and evaluation, and Ray Train's start-up


def pretrain_budget(opts: QuickstartOptions, elapsed_s: float) -> tuple[int, float]:
    """Steps, and minutes of training loop, for the time left (~2.5 min go to the later stages,
    ~45 s to Ray Train's start-up). The run plans ``MAX_STEPS`` and, a quarter, a half and three
    quarters of the way into its minutes, brings its last step forward to what fits at the pace it
    keeps (``train.fit_to_max_minutes``), so its schedules end inside the box on a slow machine and a
    fast one stops at the cap. ``--steps``: exactly those steps, no time limit."""
    if opts.steps > 0:
        return opts.steps, 0.0
    return MAX_STEPS, round(max(MIN_BOX_S, loop_seconds_left(opts, elapsed_s)) / 60, 2)


def loop_seconds_left(opts: QuickstartOptions, elapsed_s: float) -> float:
    """What ``--minutes`` leaves the training loop after the stages before and after it."""
    return opts.minutes * 60 - elapsed_s - LATER_STAGES_S


def budget_note(opts: QuickstartOptions, elapsed_s: float) -> str | None:
    """A line when ``--minutes`` is too short for the stages: the minimum box overruns it."""
    if opts.steps > 0 or loop_seconds_left(opts, elapsed_s) >= MIN_BOX_S:
        return None
    return (
        f"  --minutes {opts.minutes:g} is less than this run needs: the first two stages took {elapsed_s:.0f} s, "
        f"pre-training keeps its minimum of {MIN_BOX_S / 60:g} minute of loop, and Ray Train's start-up, "
        "embedding and evaluation take a few minutes more; the run will end later than asked"
    )


def pretrain_config(opts: QuickstartOptions, work: Path, tracking_uri: str, budget: tuple[int, float]) -> dict:
    """The quickstart's contrastive config, with ``opts.pretrain_overrides`` on top."""
    from mvssl_dist.config import load_config

    overrides = [
        f"data.path={work / 'dataset'}",
        "data.batch_size=32",
        "data.pairs_per_track=4",
        f"train.num_workers={opts.workers}",
        f"train.max_steps={budget[0]}",
        f"train.max_minutes={budget[1]}",
        "train.warmup_epochs=1",
        "train.checkpoint_every=50",
        f"train.log_every={max(1, min(5, budget[0] // 30))}",  # 30 points or more on the loss curve
        f"train.storage_path={work / 'runs'}",
        f"tracking.uri={tracking_uri}",
        f"tracking.register_as={MODEL_NAME}",
        *opts.pretrain_overrides,
    ]
    root = METHOD_CONFIGS / f"{opts.method}.yaml"
    if not root.is_file():  # a package installed without the repository's configs/
        return load_config(None, [f"method.name={opts.method}", *overrides])
    return load_config(root, overrides)


def pretrain_model(opts: QuickstartOptions, work: Path, cfg: dict, say) -> dict:
    from mvssl_dist.train.pretrain import pretrain

    run_dir = work / "runs" / "quickstart"
    resume = (run_dir / "mvssl_run.json").is_file()
    if resume:
        say("  resuming the interrupted run from its last checkpoint")
    again = "the same `mvssl quickstart` command, which resumes it"
    result = pretrain(
        cfg, run_name="quickstart", resume=resume, ray_address=opts.ray_address, report=say, continue_with=again
    )
    return {
        "run_id": result.run_id,
        "model_version": str(result.model_version),
        "model_uri": f"models:/{MODEL_NAME}/{result.model_version}",
        "steps": result.steps,
        "collapsed": result.collapsed,
    }


def embed_tracks(opts: QuickstartOptions, work: Path, model_uri: str, say) -> dict:
    from mvssl_dist.embed.batch import EmbedOptions, embed_library

    options = EmbedOptions(
        [str(work / "library")], model_uri, str(work / "embeddings"), level="both", ray_address=opts.ray_address
    )
    summary = embed_library(options, report=say)
    say(f"  {summary.tracks} tracks embedded, {summary.errors} inputs failed (listed in embeddings/errors.parquet)")
    return {"tracks": summary.tracks, "errors": summary.errors, "out": str(work / "embeddings")}


def evaluate_model(
    opts, work: Path, model: str, tracking_uri: str, features_dir, promote: str | None, say, probe: str = "mlp"
):
    from mvssl_dist.evaluate import EvaluateOptions, ProbeConfig, evaluate

    options = EvaluateOptions(
        model,
        f"csv:{work / 'library' / 'labels.csv'}",
        str(work / "library"),
        probe=ProbeConfig(probe),
        promote_alias=promote,
        cache_dir=str(work / "evaluations"),
        tracking_uri=tracking_uri,
        ray_address=opts.ray_address,
        features_dir=features_dir,
    )
    result = evaluate(options, report=say)
    say(
        f"  {model}, {probe} probe: ROC-AUC macro {result.metrics['roc_auc_macro']:.4f}, "
        f"PR-AUC macro {result.metrics['pr_auc_macro']:.4f}"
    )
    return result


NORMALISED_RANDOM = "evaluations/random-0-batchnorm-from-library.pt"


def normalised_control(work: Path) -> Path:
    """``random:0``'s weights with BatchNorm statistics measured on the labelled tracks.

    ``random:0`` runs un-normalised (a fresh backbone's BatchNorm buffers are identities), while
    the pre-trained backbone is normalised by its training data; this control differs from the
    model only in what pre-training learned (see ``mvssl_dist.evaluate.baselines``)."""
    from mvssl_dist.evaluate.baselines import normalised_random
    from mvssl_dist.evaluate.tasks import read_csv_task

    task = read_csv_task(work / "library" / "labels.csv")
    return normalised_random([work / "library" / t.path for t in task.tracks], work / NORMALISED_RANDOM)


def margin_record(margin) -> dict:
    return {**asdict(margin), "verdict": margin.verdict(), "text": margin.describe()}


def evaluation_record(result) -> dict:
    from mvssl_dist.evaluate.report import SUMMARY_KEYS

    return {
        "run_id": result.run_id,
        **{k: result.metrics[k] for k in SUMMARY_KEYS},
        "promoted": result.promoted,
        "promotion": result.promotion_note,
    }


# --------------------------------------------------------------------------- driver
def quiet_ray_logs() -> None:
    """Stage lines stay readable: Ray Data / Train progress logging goes to Ray's log files only."""
    import logging

    for name in ("ray.data", "ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_options(opts: QuickstartOptions) -> None:
    """One line for the first option out of range, before anything is written."""
    from mvssl_dist.shards import IngestOptions

    if opts.tracks < 20:
        raise QuickstartError(
            f"--tracks {opts.tracks}: at least 20 (the probe needs train, validation and test tracks)"
        )
    if opts.minutes <= 0:
        raise QuickstartError(f"--minutes {opts.minutes:g}: must be > 0")
    if opts.steps < 0:
        raise QuickstartError(f"--steps {opts.steps}: must be >= 0 (0 sizes pre-training from --minutes)")
    if opts.layers < 0:
        raise QuickstartError(f"--layers {opts.layers:g}: must be >= 0")
    if opts.unlabelled < 0:
        raise QuickstartError(f"--unlabelled {opts.unlabelled}: must be >= 0")
    if opts.method != "contrastive":
        from mvssl_dist.methods import canonical_name

        try:
            opts.method = canonical_name(opts.method)  # configs/ names each method by this name
        except ValueError as err:
            raise QuickstartError(f"--method: {err}") from None
    if opts.seconds * 0.9 < 12:  # track lengths vary by +-10% around --seconds
        raise QuickstartError(
            f"--seconds {opts.seconds:g}: at least 13.4 (tracks vary by 10% and ingest keeps tracks of 12 s and more)"
        )
    if opts.seconds * 1.1 > IngestOptions.max_duration_s:
        raise QuickstartError(
            f"--seconds {opts.seconds:g}: at most {IngestOptions.max_duration_s / 1.1:g} "
            f"(tracks vary by 10% and ingest keeps tracks of up to {IngestOptions.max_duration_s:g} s)"
        )


class Stages:
    """Runs the numbered stages, each once: a finished one is read back from ``quickstart.json``."""

    def __init__(self, state: State, result: QuickstartResult, say: Callable[[str], None]) -> None:
        self.state, self.result, self.say = state, result, say

    def run(self, number: int, name: str, title: str, work: Callable[[], dict]) -> dict:
        done = self.state.get(name)
        if done is not None:
            self.say(f"[{number}/6] {title}: already done (from {self.state.path.name})")
            return done
        self.say(f"[{number}/6] {title}")
        t0 = time.perf_counter()
        try:
            value = work()
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QuickstartError(f"stage {number} ({title}) failed: {first}") from err
        value["seconds"] = self.result.stage_seconds[name] = round(time.perf_counter() - t0, 1)
        self.state.set(name, value)
        self.say(f"  done in {value['seconds']:.0f} s")
        return value


def pretrain_title(cfg: dict) -> str:
    """Stage 3's line: workers, steps and the time box they are fitted to."""
    train = cfg["train"]
    limit, box = "", f"{train['max_minutes']:g} min"
    if train["max_minutes"]:
        limit = (
            f" at most, fitted to {box} at this machine's pace" if train["fit_to_max_minutes"] else f" (at most {box})"
        )
    workers = f"{train['num_workers']} Ray Train {'GPU ' if train['use_gpu'] else ''}workers"
    return (
        f"pre-training {cfg['method']['name']}, {workers}, {train['max_steps']} steps{limit}; registering the backbone"
    )


def evaluate_all(opts: QuickstartOptions, work: Path, model_uri: str, tracking_uri: str, say) -> dict:
    """The model, ``random:0`` and the normalised control with the MLP probe (which decides
    ``champion``), then with the k-NN probe; the model's paired margins over each baseline."""
    say("  the control: random:0's weights with BatchNorm statistics measured on the library")
    control = str(normalised_control(work))
    record = {}
    for probe in ("mlp", "knn"):
        scores = probe_scores(opts, work, (model_uri, control), tracking_uri, probe, say)
        if probe == "mlp":
            record.update(scores)
        else:
            record["knn"] = scores
    return record


def probe_scores(opts, work: Path, models: tuple[str, str], tracking_uri: str, probe: str, say) -> dict:
    from mvssl_dist.evaluate import compare

    model_uri, control = models
    promote = "champion" if probe == "mlp" else None
    features = str(work / "embeddings")  # the model's segments, embedded by stage 4
    ours = evaluate_model(opts, work, model_uri, tracking_uri, features, promote, say, probe)
    random = evaluate_model(opts, work, "random:0", tracking_uri, None, None, say, probe)
    normalised = evaluate_model(opts, work, control, tracking_uri, None, None, say, probe)
    margin, control_margin = compare(ours, random), compare(ours, normalised)
    say(f"  model - random, {probe} probe, ROC-AUC macro: {margin.describe()}")
    say(f"  model - control, {probe} probe, ROC-AUC macro: {control_margin.describe()}")
    return {
        "model": {"model": model_uri, **evaluation_record(ours)},
        "random": {"model": "random:0", **evaluation_record(random)},
        "margin": margin_record(margin),
        "control": {"model": control, **evaluation_record(normalised)},
        "control_margin": margin_record(control_margin),
    }


def run_quickstart(opts: QuickstartOptions, say: Callable[[str], None] = print) -> QuickstartResult:
    from mvssl_dist.folder_lock import output_folder

    check_options(opts)
    # held: a second quickstart here would race this one stage by stage
    with output_folder(opts.workdir, "--workdir", "mvssl quickstart", QuickstartError) as work:
        return run_stages(opts, work, say)


def run_stages(opts: QuickstartOptions, work: Path, say: Callable[[str], None]) -> QuickstartResult:
    from mvssl_dist.tracking import default_tracking_uri

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(work)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    state = State(work / STATE_FILE)
    check_reuse(opts, state, work)
    result = QuickstartResult(work, state.data)
    import ray.data  # noqa: F401  (configures its loggers on import; quieten them after)

    quiet_ray_logs()
    start = time.perf_counter()
    stages = Stages(state, result, say)
    stages.run(1, "library", "generating a labelled synthetic music library", lambda: make_library(opts, work, say))
    stages.run(2, "ingest", "ingesting it into WebDataset shards (Ray Data)", lambda: ingest_library(opts, work, say))
    budget = state.get("pretrain_budget")
    if not budget:
        elapsed = time.perf_counter() - start
        budget = pretrain_budget(opts, elapsed)
        if note := budget_note(opts, elapsed):
            say(note)
    state.set("pretrain_budget", list(budget))  # a resumed run keeps the length it started with
    state.set("pretrain_method", opts.method)
    cfg = pretrain_config(opts, work, tracking_uri, budget)
    trained = stages.run(3, "pretrain", pretrain_title(cfg), lambda: pretrain_model(opts, work, cfg, say))
    model_uri = trained["model_uri"]
    stages.run(
        4, "embed", "embedding the library (Ray Data actor pool)", lambda: embed_tracks(opts, work, model_uri, say)
    )
    stages.run(
        5,
        "evaluate",
        "probing tags on frozen embeddings: the model vs. a random backbone",
        lambda: evaluate_all(opts, work, model_uri, tracking_uri, say),
    )
    say("[6/6] summary")
    result.stage_seconds["total"] = round(time.perf_counter() - start, 1)
    for line in summary_lines(work, state.data, tracking_uri):
        say(line)
    return result


def summary_lines(work: Path, state: dict, tracking_uri: str) -> list[str]:
    ing, tr, emb, ev = state["ingest"], state["pretrain"], state["embed"], state["evaluate"]
    ours, rnd = ev["model"], ev["random"]
    method = trained_method(state) or "contrastive"  # a workdir older than the recorded budget
    key = first_key(work / "embeddings")
    ui = f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000"  # quoted: copied into a shell
    return [
        f"  dataset   {work / 'dataset'}: {ing['tracks']} tracks; {ing['rejects']} rejected, "
        f"listed with reasons in {work / 'dataset' / 'rejects.parquet'}",
        f"  model     {MODEL_NAME} v{tr['model_version']} ({method}, {tr['steps']} steps, MLflow run {tr['run_id']}); "
        f"load it with load_backbone('models:/{MODEL_NAME}@champion') "
        f"(from another folder: MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)})",
        f"  probe     ROC-AUC macro {ours['roc_auc_macro']:.4f} vs. random backbone {rnd['roc_auc_macro']:.4f} "
        f"(PR-AUC {ours['pr_auc_macro']:.4f} vs. {rnd['pr_auc_macro']:.4f}); {ours['promotion']}",
        *([f"            model - random: {ev['margin']['text']}"] if "margin" in ev else []),
        *control_lines(ev),
        *(knn_lines(ev["knn"]) if "knn" in ev else []),
        f"  embeddings {emb['out']}: {emb['tracks']} tracks",
        f"  browse runs and models:  {ui}   (then open http://127.0.0.1:5000)",
        f"  similar tracks:          mvssl neighbours --embeddings {shlex.quote(str(emb['out']))} --key {key} -k 5",
    ]


def control_lines(scores: dict) -> list[str]:
    if "control" not in scores:  # a workdir evaluated before the control existed
        return []
    return [
        f"            control (random:0's weights, BatchNorm measured on the library; random:0 itself runs "
        f"un-normalised) {scores['control']['roc_auc_macro']:.4f}",
        f"            model - control: {scores['control_margin']['text']}",
    ]


def knn_lines(knn: dict) -> list[str]:
    return [
        f"  k-NN probe (training-free: how the embedding itself groups tracks by tag) ROC-AUC macro "
        f"{knn['model']['roc_auc_macro']:.4f} vs. random backbone {knn['random']['roc_auc_macro']:.4f}",
        f"            model - random: {knn['margin']['text']}",
        *control_lines(knn),
    ]


def first_key(out: Path) -> str:
    import pyarrow.parquet as pq

    parts = sorted(out.glob("tracks-*.parquet"))
    keys = pq.read_table(parts[0], columns=["key"]).column("key").to_pylist() if parts else []
    return keys[0] if keys else "KEY"
