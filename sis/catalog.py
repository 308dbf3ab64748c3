"""What the app can offer: shipped models, fine-tuned runs and the sample gallery."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import store, zoo

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"


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


def default_key(entries: dict[str, Entry]) -> str | None:
    if zoo.DEFAULT_MODEL in entries:
        return zoo.DEFAULT_MODEL
    return next(iter(entries), None)


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

