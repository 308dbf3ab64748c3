"""What the app can offer: shipped models, fine-tuned runs and the sample gallery."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sis import files, store, zoo
from sis.vis.report import minute

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "samples"


@dataclass(frozen=True)
class Entry:
    key: str      # what pickers show: a registry name, or "run:<folder>" for a fine-tuned model
    folder: Path
    shipped: bool


def available_models() -> dict[str, Entry]:
    """Shipped models first (registry order), then fine-tuned runs, newest first."""
    out = {n: Entry(n, f, True) for n, f in zoo.shipped_models().items()}
    runs = store.data_dir() / "models"
    if runs.is_dir():
        for d in sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
                out[f"run:{d.name}"] = Entry(f"run:{d.name}", d, False)
    return out


class CatalogError(ValueError):
    """A model name or removal a user asked for cannot be done; the message says why."""


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def run_name(wanted: str, default: str) -> str:
    """The folder name of a new fine-tuned model: what the user typed (letters, digits, - _ .; spaces
    become -), else ``default``; refused where a model of that name is here already."""
    name = "-".join(wanted.strip().split()) or default
    if not set(name) <= NAME_CHARS or name.startswith(".") or len(name) > 80:
        raise CatalogError(f"'{wanted}' cannot name a model: use letters, digits, '-', '_' or '.' (at most 80)")
    folder = store.data_dir() / "models" / name
    # an empty folder is one a job has just reserved: the job manager then gives this one name-2
    if name in zoo.MODELS or (folder.is_dir() and any(folder.iterdir())) or folder.is_file():
        raise CatalogError(f"a model named '{name}' is here already; choose another name")
    return name


def _made_here(entry: Entry, done: str) -> Path:
    """The app's models folder, where ``entry`` is a model made here; else CatalogError: a shipped model is not
    ``done`` (renamed, removed)."""
    runs = (store.data_dir() / "models").resolve()
    if entry.shipped or entry.folder.resolve().parent != runs:
        raise CatalogError(f"{entry.key} is a shipped model; only models fine-tuned or adapted here can be {done}")
    return runs


def rename_model(entry: Entry, wanted: str) -> str:
    """Give a model fine-tuned or adapted here the folder name ``wanted`` (run_name's rules; refused where taken);
    its row in the runs table follows. Returns the new name. Shipped models keep theirs."""
    runs = _made_here(entry, "renamed")
    name = run_name(wanted, "")
    if not name:
        raise CatalogError("type the new name first")
    target = runs / name
    if target.exists():  # an empty folder a job has just reserved
        raise CatalogError(f"a model named '{name}' is here already; choose another name")
    entry.folder.rename(target)  # one step on one file system: another session sees the old name or the new
    store.move_run_out(str(entry.folder), str(target))
    return name


def adapted_name(key: str, adapted_to: str, when: str) -> str:
    """The folder name of a model adapted here: its start, what it was adapted to (a clip's name, "4-photos")
    and ``when`` (a time stamp), so that a photo-adapted and a clip-adapted model can be told apart."""
    base = key[4:] if key.startswith("run:") else key
    to = "".join(c if c in NAME_CHARS else "-" for c in "-".join(adapted_to.split())).strip("-.")[:24] or "frames"
    return f"{base}-adapted-to-{to}-{when}"


def remove_model(entry: Entry) -> None:
    """Delete a fine-tuned model's folder; its row in the runs table stays, as the run's record (the page
    says it was removed). Shipped models stay."""
    _made_here(entry, "removed")
    files.remove(entry.folder)


def size_on_disk(entry: Entry) -> int:
    """Bytes a model takes on this server: its folder and the graphs cached for it."""
    from sis.engines.cache import cached_for
    files_ = [p for p in entry.folder.rglob("*") if p.is_file()] + cached_for(entry.folder)
    return sum(p.stat().st_size for p in files_ if p.exists())


def saved_as(out_dir: str | None) -> str:
    """A run's model folder as the runs table names it: its name, "(removed)" once removed here; "" for none."""
    if not out_dir:
        return ""
    return Path(out_dir).name + ("" if (Path(out_dir) / "config.json").is_file() else " (removed)")


def adapted_from(entry: Entry, entries: dict[str, Entry]) -> Entry | None:
    """The model ``entry`` was adapted from without labels, where ``entries`` still offers it; else None."""
    name = None if entry.shipped else zoo.read_card(entry.folder).adapted_origin
    return None if name is None else entries.get(name) or entries.get(f"run:{name}")


def started_from(init: str | None, entries: dict[str, Entry]) -> str:
    """What a run (the runs table's ``init``) started from, as the pickers name it: a model's key, 'random' or
    'ImageNet encoder', the folder's name where ``entries`` no longer offer it, '' where unknown."""
    fresh = {"random": "random", "imagenet": "ImageNet encoder"}
    if not init or init in fresh:
        return fresh.get(init, "")
    folder = Path(init).resolve()
    return next((k for k, e in entries.items() if e.folder.resolve() == folder), Path(init).name)


def runs_table(runs: list[dict], entries: dict[str, Entry]) -> list[dict]:
    """``store.list_runs()`` as the Fine-tune page's table of runs on this host."""
    return [{"started": minute(r["ts_start"]), "model": r["model"],
             "from": started_from(r["init"], entries), "status": r["status"],
             "steps": "" if r["steps"] is None else r["steps"],
             "val mIoU %": "" if r["val_miou"] is None else round(100 * r["val_miou"], 1),
             "saved as": saved_as(r["out_dir"]), "note": r["message"] or ""} for r in runs]


def verdict(entry: Entry):
    """A fine-tuned model's before/after comparison (evaluation.before_after.BeforeAfter), None where it has none."""
    if entry.shipped:
        return None
    from sis.evaluation.before_after import BeforeAfter
    return BeforeAfter.load(entry.folder)


INTERACTIVE_MS = 150  # the default model's engine must answer a frame at its base size within this
MARGIN = 0.25  # a host's own timing overturns the card's verdict only this far beyond INTERACTIVE_MS


@dataclass(frozen=True)
class DefaultChoice:
    key: str | None
    reason: str  # the rule and its figures, in words, for Home and the CLI


def interactive(card_ms: float | None, here_ms: float | None) -> bool:
    """Whether an engine answers within INTERACTIVE_MS: the card's timing decides, and this host's kept
    (idle) comparison overturns it only from beyond a MARGIN around the line, so that a timing near
    it, taken on a slightly busy machine, does not flip the default back and forth."""
    if here_ms is None or card_ms is None:
        ms = card_ms if here_ms is None else here_ms
        return ms is not None and ms <= INTERACTIVE_MS
    if card_ms <= INTERACTIVE_MS:
        return here_ms <= INTERACTIVE_MS * (1 + MARGIN)
    return here_ms <= INTERACTIVE_MS * (1 - MARGIN)


def default_choice(entries: dict[str, Entry]) -> DefaultChoice:
    """The one rule for the model a user meets first: the most accurate shipped model (card val mIoU)
    whose engine answers a frame at its base size within INTERACTIVE_MS (``interactive``: the card's
    timing of that engine, which this host's kept comparison overturns only beyond a margin); the
    registry's DEFAULT_MODEL where no shipped model has both figures."""
    from sis.engines import choose_engine
    fits = []
    for key, e in entries.items():
        if not e.shipped:
            continue
        card, choice = zoo.read_card(e.folder), choose_engine(e.folder)
        fig = choice.figure
        here = fig.median_ms if fig is not None and fig.timed_here else None
        shipped = card.engines.get(choice.name)
        card_ms = shipped.median_ms if shipped is not None else None
        if card.val_miou is not None and interactive(card_ms, here):
            fits.append((card.val_miou, key, here if here is not None else card_ms, here is not None))
    if fits:
        miou, key, ms, timed_here = max(fits)
        return DefaultChoice(key, f"{key}: the most accurate shipped model (val mIoU {100 * miou:.1f}) whose engine "
                                  f"answers a frame within {INTERACTIVE_MS} ms ({ms:.0f} ms, "
                                  f"{'timed on this host' if timed_here else 'timed when shipped'}; a host's own "
                                  f"timing overturns the card's only from {100 * MARGIN:.0f}% beyond the line)")
    key = zoo.DEFAULT_MODEL if zoo.DEFAULT_MODEL in entries else next(iter(entries), None)
    return DefaultChoice(key, f"{key}: no shipped model has both a val score and a time, so the registry's default")


def default_key(entries: dict[str, Entry]) -> str | None:
    return default_choice(entries).key


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path


def samples() -> list[Sample]:
    if not SAMPLES_DIR.is_dir():
        return []
    return [Sample(p.stem, p, p.with_name(f"{p.stem}_label.png")) for p in sorted(SAMPLES_DIR.glob("*.jpg"))
            if p.with_name(f"{p.stem}_label.png").is_file()]



def camvid_places() -> list[Path]:
    """Where the app looks for CamVid, in order: $SIS_CAMVID, the data folder's camvid/ (where
    ``python -m sis download`` puts it by default), and a shared copy beside the checkout."""
    import os
    return ([Path(os.environ["SIS_CAMVID"])] if os.environ.get("SIS_CAMVID") else []) + \
        [store.data_dir() / "camvid", SAMPLES_DIR.parents[2] / "shared" / "camvid"]


def camvid_dir() -> Path | None:
    """CamVid in the SegNet layout at the first of ``camvid_places`` that holds it, if any."""
    for p in camvid_places():
        if (p / "train").is_dir() and (p / "trainannot").is_dir():
            return p
    return None


def camvid_missing() -> str:
    """One sentence for a page that would offer CamVid, where ``camvid_dir`` found none: where it looked, what to do."""
    places = ", ".join(str(p) for p in camvid_places())
    return (f"CamVid is not on this server (looked in {places}), so it is neither offered as a dataset nor "
            f"replayed. Whoever runs the server can fetch it with `python -m sis download`, or point "
            f"`SIS_CAMVID` at a copy in the SegNet layout.")
