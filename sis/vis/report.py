"""What the pages show, computed here as typed results: pages only lay them out. No torch."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sis import metrics, zoo
from sis.classes import ClassSet
from sis.engines import EngineChoice, choose_engine
from sis.engines.accurate import ACCURATE_MODE
from sis.engines.policy import NotKept
from sis.engines.predict import predict
from sis.vis.paint import class_share, colorize, colormap, error_map, label_png, overlay, rgb_png

DISPLAY_MAX = 1600  # longest side of the arrays a result keeps for display (session state stays small)


def image_miou(labels: np.ndarray, truth: np.ndarray, classes: ClassSet) -> dict:
    """metrics.summarize of one label map against its ground truth (void ignored)."""
    return metrics.summarize(metrics.confusion_matrix(labels, truth, classes.num_classes, classes.void), classes.names)


def _shrink(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == size:
        return arr
    im = Image.fromarray(arr)
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


@dataclass
class Segmentation:
    """One image through one model, as the Segment page shows it. Display arrays are at most
    DISPLAY_MAX on the longest side; the PNG downloads and scores are at the image's own size."""
    image: np.ndarray         # (h, w, 3) uint8, display size
    labels: np.ndarray        # (h, w) uint8 class ids, display size
    full_labels: np.ndarray   # (H, W) uint8 class ids at the image's own size (the downloads)
    confidence: np.ndarray    # (h, w, 3) viridis of the max softmax probability
    size: tuple[int, int]     # the image's (H, W)
    work_size: tuple[int, int]  # the size the model was given
    mean_confidence: float
    share: np.ndarray         # (C,) pixel share per class
    ms: float
    engine: str
    label_png: bytes
    truth: np.ndarray | None = None   # (h, w) ground-truth class ids, display size
    errors: np.ndarray | None = None  # green right, red wrong, black void
    scores: dict | None = None        # metrics.summarize against the ground truth
    note: str | None = None           # said to the user (e.g. the engine fell back to eager)
    unfamiliar: str | None = None     # said when the photo looks unlike the model's training frames
    unsure_of: tuple = ()             # the classes it is least sure of (least_sure)


def segment(engine, image: Image.Image, truth: np.ndarray | None = None,
            display_max: int = DISPLAY_MAX) -> Segmentation:
    """Everything the Segment page shows for one image on one engine, in class ids: ``paint``, ``painted_truth``
    and ``mask_png`` draw them in a palette."""
    classes = engine.cfg.class_set
    rgb = np.asarray(image.convert("RGB"))
    pred = predict(engine, rgb)
    h, w = pred.labels.shape
    f = min(1.0, display_max / max(h, w))
    disp = (max(1, round(h * f)), max(1, round(w * f)))
    labels = _shrink(pred.labels, disp, nearest=True)
    res = Segmentation(image=_shrink(rgb, disp, nearest=False), labels=labels, full_labels=pred.labels,
                       confidence=colormap(_shrink(pred.confidence, disp, nearest=False)), size=(h, w),
                       work_size=pred.work_size,
                       mean_confidence=float(pred.confidence.mean()),
                       share=class_share(pred.labels, classes.num_classes), ms=pred.ms, engine=engine.name,
                       label_png=label_png(pred.labels),
                       unsure_of=least_sure(pred.labels, pred.confidence, classes.names))
    if truth is not None and truth.shape == pred.labels.shape:
        t = _shrink(truth, disp, nearest=True)
        res.truth, res.errors = t, error_map(labels, t, classes.void)
        res.scores = image_miou(pred.labels, truth, classes)
    return res


def advice(what: str = "photo", accurate: bool = False, adapted: bool = False) -> str:
    """What may help with an unfamiliar ``what`` (photo, clip) on the page that shows it: what it offers and
    has not been tried (Video has no Accurate mode; an adapted model has been adapted)."""
    if adapted:
        return "correcting a few frames on Correct and fine-tuning on them helps most"
    if what == "clip":
        return "adapting to this clip (Adapt, no labels needed) may help"
    adapt = "adapting to a few photos of this street (Adapt, no labels needed)"
    return f"{adapt} may help" if accurate else f"Accurate mode or {adapt} may help"


def adapted(folder) -> bool:
    """Whether the model in ``folder`` was adapted here without labels (``sis adapt``, the Adapt buttons)."""
    return zoo.read_config(folder).init.startswith("adapted:")


def least_sure(labels: np.ndarray, confidence: np.ndarray, names, min_share: float = 0.05, k: int = 2) -> tuple:
    """The ``k`` classes the model is least sure of in one answer: lowest mean confidence among the classes it
    gave at least ``min_share`` of the pixels (``labels`` (H, W) ids, ``confidence`` (H, W) in [0, 1])."""
    ids, counts = np.unique(labels, return_counts=True)
    big = [(float(confidence[labels == c].mean()), int(c)) for c, n in zip(ids, counts)
           if n >= min_share * labels.size and c < len(names)]
    return tuple(names[c] for _, c in sorted(big)[:k])


def _apart(a: float, b: float) -> tuple[str, str]:
    """Two shares as percentages, with the decimals it takes for them to read as different (91.6% below 92.0%)."""
    for digits in (0, 1, 2):
        x, y = f"{100 * a:.{digits}f}%", f"{100 * b:.{digits}f}%"
        if x != y:
            return x, y
    return x, y


def unfamiliarity(mean_confidence: float, card: zoo.ModelCard, model: str, what: str = "photo",
                  unsure_of: tuple = (), help_: str | None = None) -> str | None:
    """One sentence when a ``what``'s (photo, clip) mean calibrated confidence is below what the model reaches
    on all but the least sure few of the frames it was calibrated on (the card's ``calibration.low_confidence``),
    naming the classes it is least sure of (``unsure_of``, ``least_sure``'s) and what may help (``help_``,
    default ``advice(what)``); else None."""
    if not card.unsure(mean_confidence):
        return None
    mine, line = _apart(mean_confidence, card.low_confidence)
    least = f", least of its {' and '.join(unsure_of)}" if unsure_of else ""
    return (f"{model} is unsure of this {what}: {mine} mean confidence, below the {line} that "
            f"{100 - card.low_percentile:.0f}% of {card.low_reference} reach{least}; {help_ or advice(what)}.")


def unfamiliar_to(answers: list[tuple[str, float, zoo.ModelCard]], what: str = "photo") -> str | None:
    """The one sentence for several models' (name, mean confidence, card) on the same ``what``: None when
    none finds it unfamiliar, else which do, each against its own threshold."""
    low = [(name, conf, card) for name, conf, card in answers if card.unsure(conf)]
    if len(low) <= 1:
        return unfamiliarity(low[0][1], low[0][2], low[0][0], what) if low else None
    each = ", ".join(f"{name} {' against '.join(_apart(conf, card.low_confidence))}" for name, conf, card in low)
    return (f"{len(low)} of these {len(answers)} models are unsure of this {what} ({each}): expect mistakes, most "
            f"where they disagree.")


def paint(res: Segmentation, classes: ClassSet, alpha: float, visible: list[int] | None = None) -> np.ndarray:
    """The overlay for a ``segment`` result at opacity ``alpha`` in ``classes``' colours (ClassSet.in_palette),
    painting only ``visible`` classes."""
    return overlay(res.image, res.labels, classes.palette(), alpha, visible)


def painted(labels: np.ndarray, classes: ClassSet) -> np.ndarray:
    """(H, W) class ids in ``classes``' colours (ClassSet.in_palette): (H, W, 3) uint8."""
    return colorize(labels, classes.palette())


def painted_truth(res: Segmentation, classes: ClassSet) -> np.ndarray | None:
    """A ``segment`` result's ground truth (display size) in ``classes``' colours; None without one."""
    return None if res.truth is None else colorize(res.truth, classes.palette())


def mask_png(res: Segmentation, classes: ClassSet) -> bytes:
    """A ``segment`` result's labels at the image's own size in ``classes``' colours, as PNG bytes."""
    return rgb_png(colorize(res.full_labels, classes.palette()))


def disagreement(label_maps: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """(H, W, 3) map of how many distinct answers the models give per pixel, and the share of pixels with >1."""
    stack = np.stack(label_maps)
    distinct = np.ones(stack.shape[1:], np.int32)
    for k in range(1, len(stack)):
        distinct += np.all(stack[k][None] != stack[:k], axis=0)
    frac = float((distinct > 1).mean())
    return colormap((distinct - 1) / max(len(stack) - 1, 1)), frac


@dataclass
class ModelAnswer:
    name: str
    labels: np.ndarray  # (H, W) uint8
    ms: float
    engine: str
    mean_confidence: float = float("nan")


@dataclass
class Comparison:
    image: np.ndarray
    results: list[ModelAnswer]
    disagreement: np.ndarray  # (H, W, 3) colour map
    disagree_frac: float
    note: str | None = None
    unfamiliar: str | None = None  # said when the photo looks unlike the models' training frames


def compare(engines: list[tuple[str, object]], image: Image.Image) -> Comparison:
    """The same image through each (name, engine): masks, timings and a disagreement map."""
    rgb = np.asarray(image.convert("RGB"))
    results = []
    for name, engine in engines:
        pred = predict(engine, rgb)
        results.append(ModelAnswer(name, pred.labels, pred.ms, engine.name, float(pred.confidence.mean())))
    dis, frac = disagreement([r.labels for r in results])
    return Comparison(rgb, results, dis, frac)


@dataclass
class DashboardRow:
    """One model on the dashboard: its card's figures and the engine it runs on here."""
    model: str
    arch: str
    encoder: str
    paper: str | None
    init: str
    val_miou: float | None
    pixel_acc: float | None
    per_class_iou: dict
    params_m: float | None
    gflops: float | None
    cpu_ms: float | None          # eager fp32 on the machine that shipped it
    epochs: int | None
    history: list = field(default_factory=list)
    engine: str = "eager"
    engine_ms: float | None = None
    engine_timed: str | None = None  # "this host" | "when shipped" | None (no figure)
    accurate: zoo.ModeRecord | None = None  # the accurate mode's val figures, where measured
    trained_on: str = "train"  # "train+val": val_miou is then its train-only run's (the card's val_note)
    shift_miou: float | None = None  # the shift benchmark's mean (val under other cameras and light), where measured
    dev_miou: float | None = None    # on real frames of another city and camera (zoo.DEV_SET), where measured


def dashboard_row(key: str, folder, choice: EngineChoice | None = None) -> DashboardRow:
    """``key``'s row: figures from its card (no model is built) and the engine ``choose_engine`` gives."""
    cfg, card = zoo.read_config(folder), zoo.read_card(folder)
    choice = choice or choose_engine(folder)
    fig = choice.figure
    return DashboardRow(model=key, arch=cfg.arch, encoder=cfg.encoder, paper=zoo.MODELS[cfg.name].paper,
                        init=cfg.init, val_miou=card.val_miou, pixel_acc=card.val_pixel_acc,
                        per_class_iou=card.per_class_iou, params_m=card.params and card.params / 1e6,
                        gflops=card.gflops, cpu_ms=card.latency_ms, epochs=card.epochs_run, history=card.history,
                        engine=choice.name, engine_ms=fig.median_ms if fig else None,
                        engine_timed=None if fig is None or fig.median_ms is None else
                        "this host" if fig.timed_here else "when shipped",
                        accurate=card.modes.get(ACCURATE_MODE), trained_on=card.trained_on,
                        shift_miou=card.shift_mean, dev_miou=card.dev_miou)


def zoo_table(rows: list[DashboardRow], detail: bool = False) -> list[dict]:
    """The model zoo as table rows, the one builder: for Home (``detail`` False: what tells the models apart,
    with the paper's pair) and the Compare dashboard (the figures; blanks where not measured); both narrow
    enough for a laptop's page."""
    def pct(v):
        return None if v is None else round(100 * v, 1)

    def whole(v, digits=0):
        return None if v is None else round(v, digits) if digits else round(v)
    beyond_train = any(r.trained_on != "train" for r in rows)
    out = []
    for r in rows:
        # short headers, every figure a mIoU % unless named: a laptop's page holds the dashboard's columns
        row = {"model": r.model} | ({} if detail else {"paper pair": r.paper or ""}) | {
            "val mIoU %": pct(r.val_miou), "kitti-dev %": pct(r.dev_miou)}
        if detail:
            row |= {"shift %": pct(r.shift_miou), "pixel acc %": pct(r.pixel_acc)}
        row |= {"params (M)": whole(r.params_m, 1)}
        if detail:
            row |= {"GFLOPs": whole(r.gflops, 1), "eager ms": whole(r.cpu_ms)}
        row |= {"engine here": r.engine, "engine ms": whole(r.engine_ms), "timed": r.engine_timed}
        if detail and beyond_train:
            row |= {"trained on": r.trained_on}
        out.append(row)
    return out


@dataclass(frozen=True)
class EnsembleNote:
    """One measured ensemble in one mode, against its best member in the same mode (weights/ensembles.json)."""
    name: str
    members: tuple[str, ...]
    mode: str
    miou: float
    best_member: str
    best_member_miou: float

    @property
    def offered(self) -> bool:
        """An ensemble is worth its cost only where it beats its best member."""
        return self.miou > self.best_member_miou


def ensemble_notes(path=None) -> list[EnsembleNote]:
    """The ensembles tools/accuracy_modes.py measured on val, every mode ([] where none was measured)."""
    import json
    path = path or zoo.WEIGHTS_DIR / "ensembles.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [EnsembleNote(name, tuple(e["members"]), mode, r["miou"], r["best_member"], r["best_member_miou"])
            for name, e in data.get("ensembles", {}).items() for mode, r in e["modes"].items()]


@dataclass(frozen=True)
class EngineTiming:
    name: str
    median_ms: float
    p90_ms: float
    images_per_s: float
    speedup: float                  # eager fp32's median over this one's
    card_miou_delta: float | None   # val mIoU against eager, points, as the model's card checked it


@dataclass(frozen=True)
class EngineComparison:
    """A ``bench.compare_engines`` result as judged by ``policy.judge_comparison``, for the Benchmark page
    (it reaches the page through a worker as plain data)."""
    model: str
    size: tuple[int, int]
    reference: str
    engines: list[EngineTiming]
    unavailable: dict[str, str]     # engine -> why it cannot run here
    not_kept: NotKept | None        # None: kept as this host's timing
    default: str | None             # the engine the model runs on here once kept
    channels_last_ms: float | None  # eager fp32 with channels_last, same rounds: a yardstick, not an engine
    channels_last_speedup: float | None

    @property
    def kept(self) -> bool:
        return self.not_kept is None

    @classmethod
    def from_result(cls, res: dict) -> "EngineComparison":
        checks = zoo.read_card(res["folder"]).engines

        def timing(name, r):
            delta = checks[name].miou_delta if name in checks else None
            return EngineTiming(name, r.get("median_ms"), r.get("p90_ms"), r.get("images_per_s"),
                                r.get("speedup_vs_eager"), delta)
        cl = res.get("channels_last_fp32") or {}
        return cls(res["model"], tuple(res["size"]), res["reference"],
                   [timing(n, r) for n, r in res["engines"].items()], dict(res["unavailable"]),
                   None if res["kept_for_this_host"] else NotKept(**res["not_kept"]), res["default"],
                   cl.get("median_ms"), cl.get("speedup_vs_eager"))

    def table(self) -> list[dict]:
        return [{"engine": t.name, "median ms": round(t.median_ms, 1), "p90 ms": round(t.p90_ms, 1),
                 "images/s": round(t.images_per_s, 2), "vs eager": f"{t.speedup:.2f}x",
                 "val mIoU delta (card)": None if t.card_miou_delta is None else round(t.card_miou_delta, 2)}
                for t in self.engines]


def bench_table(results: list[dict]) -> list[dict]:
    """``bench.bench`` results as table rows (a CUDA memory column only where a GPU ran)."""
    gpu = any(r.get("cuda_max_allocated_mb") is not None for r in results)
    return [{"model": r["model"], "mode": r["mode"], "device": r["device"], "batch": r["batch"],
             "size": f"{r['size'][0]}x{r['size'][1]}", "amp": r["amp"], "median ms": round(r["median_ms"], 1),
             "p90 ms": round(r["p90_ms"], 1), "images/s": round(r["images_per_s"], 2),
             "peak RSS MB": round(r["peak_rss_mb"])} | ({"CUDA MB": r.get("cuda_max_allocated_mb")} if gpu else {})
            for r in results]


def minute(ts: float) -> str:
    """A stored timestamp as the tables show it: local time, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def bench_history_table(rows: list[dict]) -> list[dict]:
    """``store.list_bench()`` as Benchmark's table of every timing kept on this host."""
    return [{"when": minute(r["ts"]), "model": r["model"],
             "mode": r["mode"], "device": r["device"], "batch": r["batch"], "size": f"{r['height']}x{r['width']}",
             "amp": bool(r["amp"]), "median ms": round(r["median_ms"], 1), "images/s": round(r["images_per_s"], 2),
             "peak RSS MB": round(r["peak_rss_mb"])} for r in rows]


def csv_text(rows: list[dict]) -> str:
    """Table rows (one keys order) as CSV text, for a download."""
    import csv
    import io
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
