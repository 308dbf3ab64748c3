"""Turn finished training runs into shipped models: fp16 weights, fp32 val figures, CPU latency,
the fast path's accuracy check, card.

    python tools/ship.py runs/ship2/pspnet-resnet18 runs/ship2/unet-resnet18 ... --data ../shared/camvid

A run that continued another (``--init`` a model folder) gets the whole lineage in its card:
``stages`` (recipe, epochs, wall time of each) and one ``history`` over all epochs.

For each run folder: copy config + fp16 weights into weights/<name>/, evaluate *those files*
on val exactly as `python -m sis eval --model NAME --data DIR --split val` does (fp32),
time a 360x480 forward on this CPU, and write everything into the card. Prints the
README's results table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sis import engines, zoo
from sis.data.dataset import load_split  # noqa: E402
from sis.engines.int8 import RANGES_FILE  # noqa: E402
from sis.engines.templates import write_templates  # noqa: E402
from sis.bench import bench, compare_engines  # noqa: E402
from sis.training.config import train_command  # noqa: E402
from sis.evaluation.evaluate import evaluate_folder  # noqa: E402
from sis.zoo import models  # noqa: E402


def _stage(card: dict) -> dict:
    return {"init": card.get("init"), "recipe": card.get("recipe"), "command": _command(card),
            "epochs": card.get("epochs_run"),
            "steps": card.get("steps"), "wall_time_s": card.get("wall_time_s"), "date": card.get("date"),
            "precision": card.get("precision"), "train_val_miou": (card.get("val") or {}).get("miou")}


def _command(card: dict) -> str | None:
    return card.get("command") or (train_command(card["recipe"]) if card.get("recipe") else None)


def lineage(card: dict) -> dict:
    """Fold the card of the run this one continued from (recipe.init) into stages + one history."""
    parent_dir = Path((card.get("recipe") or {}).get("init") or "")
    if card.get("stages") or not (parent_dir / "card.json").is_file():
        return card
    parent = lineage(zoo.card_as_written(parent_dir))
    stages = parent.get("stages") or [_stage(parent)]
    ep0, step0 = parent.get("epochs_run") or 0, parent.get("steps") or 0
    history = [dict(h, stage=h.get("stage", 1)) for h in parent.get("history", [])]
    history += [dict(h, epoch=h["epoch"] + ep0, step=h["step"] + step0, stage=len(stages) + 1,
                     time_s=h["time_s"] + (parent.get("wall_time_s") or 0)) for h in card.get("history", [])]
    return dict(card, stages=stages + [_stage(card)], history=history,
                epochs_run=ep0 + (card.get("epochs_run") or 0), steps=step0 + (card.get("steps") or 0),
                wall_time_s=round((parent.get("wall_time_s") or 0) + (card.get("wall_time_s") or 0), 1),
                init=parent.get("init", "random"), adaptation=card.get("adaptation") or _inherited(parent))


def _inherited(parent: dict) -> dict | None:
    """The parent's measured few-frame policy, kept for its continuation (no new measurement replaces
    it), with the stage each of its keys was measured on (kept where an earlier stage already says)."""
    adaptation = parent.get("adaptation")
    if not adaptation:
        return None
    stage = len(parent.get("stages") or [1])
    said = adaptation.get("measured_on_stage") or {}
    return {**adaptation, "measured_on_stage": {k: said.get(k, stage) for k in adaptation if k in zoo.ADAPTATION_KEYS}}


def replaced(old: dict) -> dict:
    """What a new model's card keeps of the shipped one it replaces (its card as written): its figures, to read
    before and after."""
    ms = zoo.ModelCard.from_dict(old).modes.get("ms")
    return {"date": old.get("date"), "command": old.get("command"), "val_miou": (old.get("val") or {}).get("miou"),
            "shift_benchmark": old.get("shift_benchmark"), "calibration": old.get("calibration"),
            "accurate_ms_miou": ms.miou if ms else None, "real_frames": old.get("real_frames")}


TIMING_KEYS = ("median_ms", "p90_ms", "images_per_s", "speedup_vs_eager", "build_s")


def keep_timings(card: dict, old: dict) -> dict:
    """``card`` with the replaced card's timings: for weights that changed only their values (the same
    architecture and graphs), so that every shipped card stays timed on one host and the default-model
    rule compares like with like. Accuracy stays the new weights'; an engine timed only in the old card
    (this host lacks it) keeps its timing with its accuracy unchecked."""
    def arch(c: dict) -> tuple:
        return tuple((c.get("complexity") or {}).get(k) for k in ("params", "gflops"))
    if arch(card) != arch(old):
        raise SystemExit(f"{card['model']}: the architecture changed since the replaced card; its timings do not hold")
    new_fast, old_fast = card["fast_path"], old["fast_path"]
    backends = {}
    for name, rec in old_fast["backends"].items():
        got = new_fast["backends"].get(name)
        timing = {k: rec[k] for k in TIMING_KEYS if k in rec}
        backends[name] = ({**got, **timing} if got is not None else
                          {**timing, "miou": None, "miou_delta": None, "pixel_acc": None,
                           "miou_note": f"not checked for these weights ({new_fast['cpu']} lacks this engine)"})
    fast = {**new_fast, "backends": backends, "default": old_fast["default"], "cpu": old_fast["cpu"],
            "threads": old_fast["threads"], "channels_last_fp32": old_fast.get("channels_last_fp32"),
            "timing_note": f"timings kept from the replaced card ({old_fast['cpu']}): "
                           f"the same architecture and graphs; accuracy measured for these weights on "
                           f"{new_fast['cpu']}"}
    return {**card, "fast_path": fast, "latency": {**old["latency"], "note": "kept from the replaced card"}}


def _val(folder: Path, data: str, frames=None) -> dict:
    """fp32 figures on the val PNGs (``frames``, else read from ``data``), as `python -m sis eval` gives them."""
    return evaluate_folder(folder, frames or load_split(data, "val", classes=zoo.read_config(folder).class_set))


def ship(run: Path, data: str, train_note: str | None = None, reference: Path | None = None,
         timings_from_replaced: bool = False) -> dict:
    """``reference``: for a run that also trained on val, the train-only run of the same recipe,
    whose val figures the card then reports (the shipped weights' own are training figures)."""
    model, cfg = models.load_model(run)
    card = lineage(zoo.card_as_written(run))
    seen_val = "val" in ((card.get("recipe") or {}).get("splits") or ["train"])
    if seen_val != (reference is not None):
        raise SystemExit(f"{run}: " + ("it trained on val: give --reference, the train-only run of its recipe"
                                       if seen_val else "--reference is for runs that trained on val"))
    if train_note:
        card["training_note"] = train_note
    if len(card.get("stages") or []) <= 1:  # one run: its command reproduces the model
        card["command"] = _command(card)
    dest = zoo.WEIGHTS_DIR / cfg.name
    old = None
    if dest.resolve() != run.resolve() and (dest / "card.json").is_file():
        old = zoo.card_as_written(dest)  # read before the new weights and card replace it
        card["replaced"] = replaced(old)
    if timings_from_replaced and old is None:
        raise SystemExit(f"{run}: --keep-timings needs a shipped card to replace")
    if "train_val" not in card:  # re-shipping a shipped folder keeps its training-time figure
        card["train_val"] = card.get("val")  # the evaluation done at the end of training
    models.save_model(model, cfg, dest, card, half=True)
    shipped, scfg = models.load_model(dest)
    frames = load_split(data, "val", classes=scfg.class_set)  # read once: the shipped file and the reference
    val = _val(dest, data, frames)
    if reference is not None:
        ref = zoo.card_as_written(reference)
        card.update(val_seen=val, reference={
            "run": str(reference), "command": _command(ref), "epochs": ref.get("epochs_run"),
            "seed": (ref.get("recipe") or {}).get("seed"),
            "note": "these weights trained on train+val, so their val figures are training figures (val_seen); "
                    "val is the train-only run of the same recipe"})
        val = _val(reference, data, frames)
    if not timings_from_replaced:  # else keep_timings below carries the replaced card's
        lat = bench(cfg.name, "infer", "cpu", 1, (360, 480), warmup=2, repeats=7, folder=dest)
        card["latency"] = {k: lat[k] for k in ("median_ms", "p90_ms", "images_per_s", "size", "batch")} | \
            {"threads": lat["host"]["torch_threads"], "cpu": lat["host"]["cpu"], "precision": "fp32 eager"}
    card.update(val=val, val_eval=f"python -m sis eval --model {cfg.name} --data {data} --split val (fp32)",
                weights="fp16 safetensors (computed in fp32 after loading)", complexity=models.config_complexity(scfg),
                encoder_init_note="random init: ImageNet weights cannot be downloaded on the training machine")
    # int8 activation ranges, calibrated once on the 16 shipped train frames, ship with the weights
    (dest / RANGES_FILE).unlink(missing_ok=True)
    size = tuple(scfg.base_size)
    int8 = engines.load_engine(dest, "onnxruntime-int8")
    int8.prepare(size)
    shutil.copy(int8.ranges_path(), dest / RANGES_FILE)
    # the fp32 graphs of common photo shapes without their weights: first starts build from them (no smp)
    write_templates(shipped, scfg, dest)
    fast = compare_engines(cfg.name, data, repeats=20, timed=not timings_from_replaced)
    # the card keeps its key "backends" (engine name -> figures): zoo.ModelCard reads it
    card["fast_path"] = {"default": fast["default"], "backends": fast["engines"], "val_frames": fast["val_frames"],
                         "reference": "eager fp32, plain smp (NCHW)", "channels_last_fp32": fast["channels_last_fp32"],
                         "size": fast["size"], "threads": fast["host"]["torch_threads"], "cpu": fast["host"]["cpu"],
                         "command": f"python -m sis bench --compare-engines --model {cfg.name} --data {data}"}
    if timings_from_replaced:
        card = keep_timings(card, old)
    zoo.write_card(dest, card)
    return card


def table(cards: list[dict], names) -> str:
    head = "| model | paper pair | val mIoU | pixel acc | " + " | ".join(names) + " | params | CPU ms |"
    sep = "|" + "---|" * (6 + len(names))
    rows = [head, sep]
    for c in cards:
        v = c["val"]
        ious = " | ".join("-" if v["per_class_iou"][n] is None else f"{100 * v['per_class_iou'][n]:.1f}" for n in names)
        params = (c.get("complexity") or models.complexity(c["model"]))["params"] / 1e6
        rows.append(f"| {c['model']} | {c['paper_pair']} | **{100 * v['miou']:.2f}** | {100 * v['pixel_acc']:.2f} | "
                    f"{ious} | {params:.1f}M | {c['latency']['median_ms']:.0f} |")
    return "\n".join(rows)


def _engine_cell(r: dict) -> str:
    delta = "unchecked" if r.get("miou_delta") is None else f"{r['miou_delta']:+.2f}"
    return f"{r['median_ms']:.0f} ms, {r['speedup_vs_eager']:.2f}x, {delta}"


def fast_table(cards: list[dict]) -> str:
    """Per model: every engine's median ms, speed-up over eager fp32 and val mIoU difference."""
    # cards shipped on other hosts may have timed other engines (torch-bf16 only where bf16 pays): "-" where one did not
    names = list(dict.fromkeys(n for c in cards for n in c["fast_path"]["backends"]))
    rows = ["| model | " + " | ".join(names) + " | eager + channels_last | default |", "|" + "---|" * (len(names) + 3)]
    for c in cards:
        b = c["fast_path"]["backends"]
        cells = [_engine_cell(b[n]) if n in b else "-" for n in names]
        cl = c["fast_path"].get("channels_last_fp32")
        cells.append(f"{cl['median_ms']:.0f} ms, {cl['speedup_vs_eager']:.2f}x" if cl else "-")
        rows.append(f"| {c['model']} | " + " | ".join(cells) + f" | {c['fast_path']['default']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="*", help="finished run folders (none: just print the tables)")
    ap.add_argument("--data", default="../shared/camvid")
    ap.add_argument("--train-note", help="how the runs were made, for the cards (e.g. where they trained)")
    ap.add_argument("--reference", type=Path, nargs="*", default=[],
                    help="for runs trained on train+val: the train-only run of the same recipe, one per run "
                         "(its val figures go in the card)")
    ap.add_argument("--keep-timings", action="store_true",
                    help="the architecture is unchanged: keep the replaced cards' engine timings (their host) so "
                         "that every shipped card is timed on one host; accuracy is measured anew")
    ap.add_argument("--templates", action="store_true",
                    help="only rewrite every shipped model's graph templates (weights and cards unchanged)")
    a = ap.parse_args()
    if a.templates:
        for name, folder in zoo.shipped_models().items():
            written = write_templates(*models.load_model(folder), folder)
            print(f"{name}: " + ", ".join(f"{p.name} {p.stat().st_size / 1e3:.0f} KB" for p in written),
                  file=sys.stderr)
        sys.exit(0)
    cards = []
    refs = {r.name: r for r in a.reference}  # matched by folder name: runs/final/X <- runs/ref/X
    for run in a.runs:
        cards.append(ship(run, a.data, a.train_note, refs.get(run.name), a.keep_timings))
        print(f"shipped {run.name}: val mIoU {100 * cards[-1]['val']['miou']:.2f}, fast path "
              f"{cards[-1]['fast_path']['default']}", file=sys.stderr)
    # the tables cover every shipped model, whichever were shipped just now
    cards = [zoo.card_as_written(f) for f in zoo.shipped_models().values()]
    cards = [c for c in cards if c.get("fast_path")]
    if cards:
        print(table(cards, cards[0]["classes"]))
        print()
        print(fast_table(cards))
