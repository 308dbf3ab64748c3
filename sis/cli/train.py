"""``python -m sis train``: a TrainConfig from the options, then the loop."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from sis.cli.progress import StderrProgress


def train_config(a):
    """`train`'s arguments -> TrainConfig (sis.training.config.train_command is the inverse), by the rule the
    Fine-tune page follows too (``config_for``): fine-tuning a model folder (``--init DIR``) keeps the folder's
    model and, for the options not given, its recipe."""
    from sis.training.config import FLAGS, config_for
    return config_for(a.data, a.model, a.out, **{name: getattr(a, name) for name in FLAGS})


def cmd_train(a) -> int:
    from tqdm import tqdm

    from sis.training.loop import train
    cfg = train_config(a)
    from sis import zoo
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
    if res.rank == 0:
        v = res.val
        print(f"{res.status}: {res.steps} steps -> {res.out}" +
              (f" (val mIoU {100 * v['miou']:.2f}, pixel acc {100 * v['pixel_acc']:.2f})" if v else ""))
        if cfg.from_folder and Path(res.out, "config.json").is_file():
            from sis.engines import choose_engine  # a fine-tune carries its start's checked graphs
            print(f"engine: {choose_engine(Path(res.out)).reason()}")
    print(f"rank {res.rank} weights {res.digest}", file=sys.stderr)
    return 0


def cmd_adapt(a) -> int:
    """``adapt --unlabeled``: a new model folder with the BatchNorm statistics of the user's frames, then its
    BatchNorm layers fitted to surer predictions on them."""
    from sis import zoo
    from sis.adaptation.unlabeled import adapt_folder
    init = zoo.resolve(a.init)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise zoo.ModelError(f"{out} exists and is not empty; choose a new folder for the adapted model")

    progress = StderrProgress(lambda i, n: f"adapting: {i}/{n} steps")
    res = adapt_folder(init, Path(a.unlabeled), out, a.stride, progress, prior_frames=a.prior_frames,
                       fit_epochs=a.fit_epochs)
    progress.close()
    for name, why in res.skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    taken = f", one in {res.stride}," if res.stride > 1 else ""
    fitted = f", then {res.fit_steps} fitting steps" if res.fit_steps else ""
    print(f"adapted {init.name} on {res.frames} frames{taken} ({res.layers} BatchNorm layers, "
          f"{res.training_share:.0%} of the training statistics kept{fitted}) in {res.seconds:.0f} s -> {out}")
    from sis.engines import choose_engine
    checked = "" if res.graph_agreement is None else \
        f"; its fp32 graph labels the frames {100 * res.graph_agreement:.2f}% alike to eager (mIoU)"
    if res.int8_agreement is not None:
        checked += (f", its int8 graph {100 * res.int8_agreement:.2f}% (its start's int8 graph "
                    f"{100 * res.int8_start_agreement:.2f}% alike to its own eager)")
    print(f"engine: {choose_engine(out).reason()}{checked}")
    return 0
