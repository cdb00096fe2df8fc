"""Tagging tasks: the reference's MTAT split, MTG-Jamendo splits, and any user CSV.

A task is a vocabulary plus tracks, each with a path relative to the audio root, a split
(``train`` / ``validation`` / ``test``) and a multi-hot label vector.
"""

from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")
JAMENDO = {
    "jamendo-genre": ("autotagging_genre", ("genre",)),
    "jamendo-mood": ("autotagging_moodtheme", ("mood/theme",)),
    "jamendo-instrument": ("autotagging_instrument", ("instrument",)),
    "jamendo-top50": ("autotagging_top50tags", ("genre", "mood/theme", "instrument")),
}
MTAT_FILES = {"train": "train", "validation": "valid", "test": "test"}
MTAT_TAGS = 50
TASK_NAMES = ("mtat", *JAMENDO, "csv:PATH")


class TaskError(ValueError):
    """A task's split files are missing or malformed; one line naming the file."""


@dataclass
class TaskTrack:
    track_id: str
    path: str  # relative to the audio root (or absolute, or a URI)
    split: str
    labels: np.ndarray  # [num_tags] float32 multi-hot


@dataclass
class Task:
    name: str
    vocabulary: list[str]
    tracks: list[TaskTrack] = field(default_factory=list)

    def split(self, name: str) -> list[TaskTrack]:
        return [t for t in self.tracks if t.split == name]

    def local_names(self, path: str) -> tuple[str, ...]:
        """The names to look for under a local audio root, in order: the split file's, then for
        MTG-Jamendo its low-quality download's (``audio-low`` holds ``14/214.low.mp3`` where the
        split files say ``14/214.mp3``)."""
        if self.name in JAMENDO and path.endswith(".mp3"):
            return (path, path[: -len(".mp3")] + ".low.mp3")
        return (path,)

    def slug(self) -> str:
        """A name usable in MLflow tag keys and file names (``csv:data/x.csv`` -> ``csv-x``)."""
        if self.name.startswith("csv:"):
            return "csv-" + Path(self.name[4:]).stem
        return self.name


# --------------------------------------------------------------------------- safe pickles
class ListOfStringsUnpickler(pickle.Unpickler):
    """Unpickles only lists/tuples of strings: any class or function reference is refused.

    ``find_class`` is the only way a pickle reaches code (``GLOBAL``/``STACK_GLOBAL``, and through
    them ``REDUCE``/``BUILD``/``INST``/``OBJ``); refusing every name makes those opcodes fail
    before anything is called.
    """

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only lists of strings are accepted")


def load_string_list(path: Path) -> list[str]:
    """A pickled list of strings (the MTAT ``*.cP`` files), read without running any code."""
    try:
        value = ListOfStringsUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise TaskError(f"{path}: split file not found") from None
    except Exception as err:  # UnpicklingError, EOFError, ValueError, ...
        raise TaskError(f"{path}: not a pickled list of strings ({err})") from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TaskError(f"{path}: expected a pickled list of strings, got {type(value).__name__}")
    return list(value)


def read_text(path: Path) -> str:
    """A task file's text: UTF-8 (a leading BOM, as spreadsheets write, is dropped); otherwise one
    line naming the file, the line and the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save it as UTF-8") from None


def load_labels(path: Path, rows: int, columns: int, matches: str) -> np.ndarray:
    """An ``.npy`` matrix of 0/1 labels ``[rows, columns]``, read without pickles."""
    if not path.is_file():
        raise TaskError(f"{path}: split file not found")
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":  # np.load would take it for a pickle, and say so
            raise TaskError(f"{path}: not a NumPy .npy file")
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # truncated, or an object array
        raise TaskError(f"{path}: not a NumPy .npy array of 0/1 labels ({str(err).splitlines()[0]})") from None
    if labels.shape != (rows, columns):
        raise TaskError(f"{path}: shape {labels.shape}, expected ({rows}, {columns}) to match {matches}")
    if labels.dtype.kind not in "biuf":
        raise TaskError(f"{path}: labels must be numbers 0 or 1, found dtype {labels.dtype}")
    wrong = np.argwhere((labels != 0) & (labels != 1))
    if len(wrong):
        row, column = wrong[0]
        raise TaskError(f"{path}: labels must be 0 or 1, found {labels[row, column]} at row {row}, column {column}")
    return labels


# --------------------------------------------------------------------------- MTAT
def mtat_vocabulary(split_dir: Path) -> list[str]:
    """Tag names from ``tags.txt`` (one per line) if the split folder has one, else ``tag00``…``tag49``."""
    names_file = split_dir / "tags.txt"
    if names_file.is_file():
        names = [line.strip() for line in read_text(names_file).splitlines() if line.strip()]
        if len(names) != MTAT_TAGS:
            raise TaskError(f"{names_file}: expected {MTAT_TAGS} tag names, found {len(names)}")
        return names
    return [f"tag{i:02d}" for i in range(MTAT_TAGS)]


def read_mtat(split_dir: Path) -> Task:
    """``{train,valid,test}_list_pub.cP`` + ``y_{train,valid,test}_pub.npy``; audio is ``<entry minus ext>.mp3``."""
    task = Task("mtat", mtat_vocabulary(split_dir))
    for split, stem in MTAT_FILES.items():
        entries = load_string_list(split_dir / f"{stem}_list_pub.cP")
        labels = load_labels(split_dir / f"y_{stem}_pub.npy", len(entries), MTAT_TAGS, f"{stem}_list_pub.cP")
        for entry, row in zip(entries, labels, strict=True):
            path = entry.rsplit(".", 1)[0] + ".mp3"
            task.tracks.append(TaskTrack(path, path, split, row.astype(np.float32)))
    return task


# --------------------------------------------------------------------------- MTG-Jamendo
def jamendo_file(split_dir: Path, prefix: str, split: str) -> Path:
    name = f"{prefix}-{split}.tsv"
    for folder in (split_dir, split_dir / "data" / "splits" / "split-0"):
        if (folder / name).is_file():
            return folder / name
    raise TaskError(f"{split_dir / name}: split file not found (also looked in data/splits/split-0/)")


def read_jamendo_rows(path: Path, categories: tuple[str, ...]) -> list[tuple[str, str, list[str]]]:
    """``(track_id, path, tags)`` per row; tags keep their ``category---name`` form."""
    rows = []
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if not header or header[:5] != ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION"]:
            raise TaskError(f"{path}: header must start TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION (got {header})")
        for line, row in enumerate(reader, start=2):
            if len(row) < 6:
                raise TaskError(f"{path}:{line}: expected at least 6 tab-separated fields, got {len(row)}")
            for tag in row[5:]:
                category, sep, name = tag.partition("---")
                if not sep or not name:
                    raise TaskError(f"{path}:{line}: tag '{tag}' is not of the form category---name")
                if category not in categories:
                    raise TaskError(f"{path}:{line}: tag '{tag}' is not a {' / '.join(categories)} tag")
            rows.append((row[0], row[3], row[5:]))
    return rows


def read_jamendo(task_name: str, split_dir: Path) -> Task:
    prefix, categories = JAMENDO[task_name]
    by_split = {s: read_jamendo_rows(jamendo_file(split_dir, prefix, s), categories) for s in SPLITS}
    vocabulary = sorted({tag for rows in by_split.values() for _, _, tags in rows for tag in tags})
    return build_task(task_name, vocabulary, by_split)


# --------------------------------------------------------------------------- user CSV
def read_csv_task(path: Path) -> Task:
    """Columns ``uri``, ``split`` (train/validation/test), ``tags`` (comma-separated)."""
    if not path.is_file():
        raise TaskError(f"{path}: task file not found")
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    first_line: dict[str, int] = {}
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = {"uri", "split", "tags"} - set(reader.fieldnames)
        if missing:
            raise TaskError(
                f"{path}: missing column(s) {', '.join(sorted(missing))} (need uri, split, tags){other_separator(reader.fieldnames)}"
            )
        for line, row in enumerate(reader, start=2):
            if row["uri"] is None or row["split"] is None:
                raise TaskError(f"{path}:{line}: too few fields (need uri, split, tags)")
            split = row["split"].strip()
            if split not in SPLITS:
                raise TaskError(f"{path}:{line}: split '{split}' is not one of {', '.join(SPLITS)}")
            tags = [t.strip() for t in (row["tags"] or "").split(",") if t.strip()]
            uri = row["uri"].strip()
            if uri in first_line:  # in two splits, the probe would be tested on what it trained on
                raise TaskError(f"{path}:{line}: {uri} is listed again (first on line {first_line[uri]})")
            first_line[uri] = line
            by_split[split].append((uri, uri, tags))
    vocabulary = sorted({tag for _, _, tags in by_split["train"] for tag in tags})
    for split in ("validation", "test"):
        for uri, _, tags in by_split[split]:
            unknown = [t for t in tags if t not in vocabulary]
            if unknown:
                raise TaskError(f"{path}: {split} track {uri} has tag '{unknown[0]}' that no train track has")
    return build_task(f"csv:{path}", vocabulary, by_split)


def other_separator(header: list[str]) -> str:
    """A hint when a header that lacks the columns was written with another separator (a
    spreadsheet set to a semicolon, or tabs), which leaves it one field."""
    if len(header) == 1 and (sep := next((c for c in ";\t|" if c in header[0]), None)):
        return f"; the header is one field {header[0]!r}: separate the columns with commas, not {sep!r}"
    return ""


def build_task(name: str, vocabulary: list[str], by_split: dict[str, list]) -> Task:
    index = {tag: i for i, tag in enumerate(vocabulary)}
    task = Task(name, vocabulary)
    for split in SPLITS:
        if not by_split[split]:
            raise TaskError(f"task {name}: the {split} split is empty")
        for track_id, path, tags in by_split[split]:
            labels = np.zeros(len(vocabulary), np.float32)
            labels[[index[t] for t in tags]] = 1.0
            task.tracks.append(TaskTrack(track_id, path, split, labels))
    return task


def checked_labels(task: Task) -> Task:
    """Refuse, before any audio is embedded, a task that could teach nothing or score nothing."""
    if not task.vocabulary:
        raise TaskError(f"task {task.name}: no train track has a tag: nothing to learn")
    from mvssl_dist.evaluate.metrics import scorable

    if not scorable(np.stack([t.labels for t in task.split("test")])).any():
        raise TaskError(
            f"task {task.name}, test split: no tag is on some test tracks and not on others: nothing to score"
        )
    return task


def load_task(name: str, split_dir: str | Path | None) -> Task:
    if name.startswith("csv:"):
        return read_csv_task(Path(name[4:]))
    if name not in ("mtat", *JAMENDO):
        raise TaskError(f"--task {name}: unknown (choose from {', '.join(TASK_NAMES)})")
    if not split_dir:
        raise TaskError(f"--task {name} needs --split-dir (the folder holding its split files)")
    if not Path(split_dir).is_dir():
        raise TaskError(f"--split-dir {split_dir}: no such directory")
    return read_mtat(Path(split_dir)) if name == "mtat" else read_jamendo(name, Path(split_dir))


def limit_train(task: Task, fraction: float, seed: int = 0) -> Task:
    """Keep a random ``fraction`` of the train tracks (the reference's limited-data setting)."""
    if not 0 < fraction <= 1:
        raise TaskError(f"--train-fraction {fraction}: must be in (0, 1]")
    if fraction == 1:
        return task
    train = task.split("train")
    keep = max(1, int(fraction * len(train)))
    chosen = {id(train[i]) for i in np.random.default_rng(seed).choice(len(train), keep, replace=False)}
    tracks = [t for t in task.tracks if t.split != "train" or id(t) in chosen]
    return Task(task.name, task.vocabulary, tracks)
