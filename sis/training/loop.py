"""Training: the loop, read top to bottom as setup, loop and finish.

Defaults follow the SIS-CNN paper: Adam at lr 2e-4, cross-entropy ignoring void,
horizontal + vertical flips, validation after every epoch, loss / pixel accuracy /
mIoU logged per epoch. Run data-parallel with ``torchrun --nproc_per_node N -m sis train``."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from sis import zoo
from sis.classes import ClassSet
from sis.data.augment import SegDataset, build_augment, build_photometric
from sis.data.dataset import (
    HOLDOUT_EVERY,
    HOLDOUT_MIN,
    Frames,
    class_weights,
    load_classes,
    load_split,
    load_splits,
    validation_plan,
)
from sis.training.carry import CARRY_STAGES, carried_engines
from sis.training.checkpoints import load_checkpoint, save_checkpoint
from sis.training.config import Progress, StopFlag, TrainConfig, TrainingError, train_command
from sis.training.distill import check_scale, combined_loss, labels_as_targets, teacher_targets
from sis.training.evaluate import evaluate
from sis.zoo import models
from sis.zoo.preprocess import model_input, pad_to_stride
from sis.zoo.runtime import amp_dtype, autocast, host_info, pick_device


def validation_frames(root: Path, train: Frames, limit: int | None, classes) -> tuple[Frames, Frames | None, str]:
    """(train frames, val frames or None, how the run validates in words): the dataset's val/ split
    where it has one, else every HOLDOUT_EVERY-th of its train frames once it has HOLDOUT_MIN, else none."""
    said = validation_plan(root, len(train))
    if (Path(root) / "val").is_dir():
        val = load_split(root, "val", limit, classes)
        return train, val, said
    n = len(train)
    if n < HOLDOUT_MIN:
        return train, None, said
    held = range(HOLDOUT_EVERY - 1, n, HOLDOUT_EVERY)
    return train.subset([i for i in range(n) if i not in held]), train.subset(held), said


def load_replay(root: str, limit: int | None, classes) -> Frames:
    """The train frames of a base dataset to mix into every batch: ``limit`` of them, spread evenly (only
    those are read)."""
    if load_classes(root).names != classes.names:
        raise TrainingError(f"the replay dataset {root} has other classes than the training data")
    return load_split(root, "train", limit or None, classes, evenly=True)


def lr_at(step: int, total: int, base: float, schedule: str, warmup: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: pure, so resume is exact."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "constant":
        return base
    if schedule == "poly":
        return base * (1 - t) ** 0.9
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr schedule '{schedule}'; choose constant, poly or cosine")


# ------------------------------------------------------------------ distributed
def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(device: torch.device) -> tuple[int, int]:
    rank, world = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def _sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Average BatchNorm running stats across ranks: DDP syncs weights, each rank keeps its own stats."""
    if world > 1:
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf /= world


# ------------------------------------------------------------------ the loop
@dataclass
class _Data:
    """What the loop trains on: decoded once, augmented on tensors in the loop's process."""
    classes: ClassSet
    train: Frames
    val: Frames | None
    validation: str          # how the run validates, in words
    dataset: SegDataset      # the training frames (with the teacher's soft targets when distilling without replay)
    replay: SegDataset | None  # with the teacher's soft targets when distilling
    n_replay: int            # replay frames in each batch
    per_batch: int           # training frames in each batch
    crop: tuple[int, int] | None  # the random crop: the config's, or common_crop's where frames differ in size


def common_crop(images: list) -> tuple[int, int] | None:
    """None where every image has one size (full frames batch together); else the largest (h, w) every one of
    them holds, so that a random crop of that size batches them without padding."""
    sizes = {tuple(i.shape[-2:]) for i in images}  # (3, h, w) tensors
    return None if len(sizes) <= 1 else (min(h for h, _ in sizes), min(w for _, w in sizes))


def _load_data(cfg: TrainConfig, device: torch.device, rank: int, log: Callable[[str], None]) -> _Data:
    classes = load_classes(cfg.data)
    frames = load_splits(cfg.data, cfg.splits, cfg.train_limit, classes)
    val, validation = None, "none (--val-every 0)"
    if "val" in cfg.splits:
        validation = "none: the val split is trained on (its figures would be training figures)"
    elif cfg.val_every:
        frames, val, validation = validation_frames(cfg.data, frames, cfg.val_limit, classes)
    if rank == 0:
        log(f"validation: {validation}")
    photometric = build_photometric(cfg.photometric)  # checked before the teacher's pass
    if not 0 <= cfg.replay_ratio < 1:
        raise TrainingError(f"the replay ratio is a share of each batch, within 0 and 1 (exclusive), "
                            f"not {cfg.replay_ratio}")
    if not 0 <= cfg.init_share < 1:
        raise TrainingError(f"the starting model's share of the saved weights is within 0 and 1 (exclusive), "
                            f"not {cfg.init_share}")
    replay_frames = load_replay(cfg.replay, cfg.replay_limit, classes) if cfg.replay else None
    # with replay the teacher speaks for what the model knew (the replayed frames); the training frames are
    # new ones it got wrong, so their own labels are their targets (_batch)
    taught = frames if replay_frames is None else replay_frames
    soft = _teacher_targets(cfg, taught, device, log) if cfg.teacher else None
    if soft is not None and replay_frames is not None:
        log("the teacher answers on the replayed frames; the training frames are taught by their labels")
    crop = cfg.crop or common_crop(frames.images + (replay_frames.images if replay_frames else []))
    if crop != cfg.crop and rank == 0:
        log(f"the training frames differ in size{' (with the replay frames)' if replay_frames else ''}: each is "
            f"cropped at random to {crop[0]}x{crop[1]}, the largest all of them hold (--crop sets another)")
    augment = build_augment(cfg.flips, crop, cfg.scale, classes.void if classes.void is not None else 255)
    replay = SegDataset(replay_frames, augment, soft) if replay_frames is not None else None
    train_soft = soft if replay is None else None
    n_replay = min(cfg.batch_size - 1, round(cfg.batch_size * cfg.replay_ratio)) if replay else 0
    if replay is not None:
        replay.photometric = photometric
    return _Data(classes, frames, val, validation, SegDataset(frames, augment, train_soft, photometric), replay,
                 n_replay, cfg.batch_size - n_replay, crop)


def _teacher_targets(cfg: TrainConfig, frames: Frames, device: torch.device, log: Callable[[str], None]) -> list:
    """The teacher's soft targets for every one of ``frames``, its settings checked first (its pass takes
    minutes on a CPU)."""
    if not 0 <= cfg.distill_alpha <= 1:
        raise TrainingError(f"the teacher's share of the loss is within 0 and 1, not {cfg.distill_alpha}")
    if cfg.distill_temperature <= 0:
        raise TrainingError(f"the distillation temperature must be positive, not {cfg.distill_temperature}")
    try:
        check_scale(cfg.teacher_scale)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    try:
        soft = teacher_targets(frames, cfg.teacher, cfg.teacher_tta, device.type, log, cfg.teacher_scale)
    except zoo.ModelError:
        raise
    except ValueError as e:
        raise TrainingError(f"the teacher cannot label this data: {e}") from None
    if cfg.threads:  # loading a torch engine set the thread count to the host's
        torch.set_num_threads(cfg.threads)
    return soft


def _load_model(cfg: TrainConfig, classes: ClassSet,
                log: Callable[[str], None]) -> tuple[torch.nn.Module, zoo.ModelConfig, dict | None]:
    """A fresh model (random or ImageNet encoder), or the one saved in the folder ``cfg.init`` to fine-tune;
    and the starting weights, kept where ``cfg.init_share`` will average them back in at the end (None where
    there is nothing to keep or no like to average with: a new head starts random)."""
    if not cfg.from_folder:
        return (*models.create_model(cfg.model, classes, cfg.init), None)
    model, mcfg = models.load_model(Path(cfg.init))
    current = zoo.make_config(mcfg.name, mcfg.class_set) if mcfg.name in zoo.MODELS else mcfg
    if current.smp_kwargs != mcfg.smp_kwargs:
        # the registry's architecture for this name changed since the folder was saved:
        # build the current one and carry over every tensor that still fits
        fresh, mcfg = models.create_model(current, mcfg.class_set)
        copied, reinit = models.transplant(fresh, model.state_dict())
        model = fresh
        log(f"{cfg.init} was saved with an older {mcfg.name} architecture: carried over "
            f"{len(copied)} tensors, {len(reinit)} start fresh ({', '.join(sorted({k.rsplit('.', 2)[0] for k in reinit})[:6])})")
    new_head = mcfg.class_set.num_classes != classes.num_classes
    if new_head:
        models.reset_head(model, classes.num_classes)
        log(f"new classifier head: {mcfg.class_set.num_classes} -> {classes.num_classes} classes")
    mcfg.classes = classes.to_dict()
    mcfg.init = f"finetune:{Path(cfg.init).name}"
    keep = cfg.init_share and not new_head
    return model, mcfg, ({k: v.detach().clone() for k, v in model.state_dict().items()} if keep else None)


def _mix_in_start(cfg, model, mcfg, start: dict, data, val, device, log) -> dict | None:
    """Average the starting weights back in at ``cfg.init_share`` (weight-space ensembling, Wortsman et al.,
    CVPR 2022: the fine-tune's gain, less of what it forgot; docs/correct.md); val scored again, so
    the card describes the model saved. BatchNorm's counters stay the fine-tune's."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():  # start is this model's own state before training: same keys, same shapes
                v.mul_(1 - cfg.init_share).add_(start[k].to(v.device, v.dtype), alpha=cfg.init_share)
    if data.val is None or val is None:
        log(f"kept {100 * cfg.init_share:.0f}% of {Path(cfg.init).name}'s weights")
        return val
    mixed = evaluate(model, mcfg, data.val, device, amp=False)  # the card's figure, in fp32 as the last val
    log(f"kept {100 * cfg.init_share:.0f}% of {Path(cfg.init).name}'s weights: val mIoU {val['miou']:.4f} -> "
        f"{mixed['miou']:.4f}")
    return mixed


def _fp32_here(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a finished run's val figure is eager fp32 on the CPU for the weights it saves (its last val
    runs without autocast; no fp16 save): an engine's val figure may then be taken against it."""
    return device.type == "cpu" and not cfg.save_half


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.optimizer)
    if opt_cls is None:
        raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose adam or adamw")
    return opt_cls([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def _onto_gpu(data: _Data, device: torch.device) -> None:
    """Augment on the GPU: CamVid's train frames take ~0.7 GB there, and per-image resizes on the
    host would leave a fast GPU waiting on the Python loop."""
    data.train.images = [i.to(device) for i in data.train.images]
    data.train.masks = [m.to(device) for m in data.train.masks]
    if data.dataset.soft is not None:
        data.dataset.soft = [t.to(device) for t in data.dataset.soft]
    torch.backends.cudnn.benchmark = True


def _batch(cfg: TrainConfig, data: _Data, order: list[int], b: int, step: int):
    """Batch ``b`` of the epoch's ``order``, plus replay frames drawn by (seed, step) so that a resumed
    run draws the same ones: (images, masks, teacher targets or None), on the CPU."""
    idx = order[b * data.per_batch:(b + 1) * data.per_batch]
    pairs = [data.dataset[i] for i in idx]
    if data.replay is not None:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        pairs += [data.replay[int(i)] for i in torch.randint(len(data.replay), (data.n_replay,), generator=g)]
    imgs, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    if all(len(p) == 2 for p in pairs):
        return imgs, masks, None
    # a teacher on the replayed frames only: the training frames' targets are their labels
    n = data.classes.num_classes
    return imgs, masks, torch.stack([p[2] if len(p) > 2 else labels_as_targets(p[1], n) for p in pairs])


def _train_mode(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Training mode, with the BatchNorm layers normalising by their running statistics where those are held."""
    model.train()
    if cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _card(cfg: TrainConfig, mcfg: zoo.ModelConfig, data: _Data, status: str, step: int, history: list,
          val: dict | None, wall: float, world: int, device: torch.device) -> dict:
    """The card written beside the weights: what was trained, how, on what, and how it scored."""
    classes = data.classes
    return {
        "model": mcfg.name, "paper_pair": zoo.MODELS[mcfg.name].paper, "init": mcfg.init,
        "classes": list(classes.names), "palette": [list(c) for c in classes.colors], "void": classes.void,
        "status": status, "steps": step, "epochs_run": len([h for h in history if not h.get("partial")]),
        "wall_time_s": round(wall, 1), "history": history,
        "val": val, "recipe": cfg.to_dict(), "command": train_command(cfg), "world_size": world,
        "complexity": models.config_complexity(mcfg),
        "precision": str(amp_dtype(device)) if cfg.amp and amp_dtype(device) else "fp32",
        "hardware": host_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(cfg.data), "splits": list(cfg.splits), "train_frames": len(data.train),
                 "val_frames": len(data.val) if data.val is not None else 0, "validation": data.validation,
                 "replay": {"root": str(cfg.replay), "frames": len(data.replay), "per_batch": data.n_replay}
                 if data.replay else None},
    }


CALIBRATION_REPLAY_FRAMES = 34  # of the replay dataset's val split, spread evenly: a third of CamVid's, seconds


def _calibration_set(cfg: TrainConfig, data: _Data, validated: bool) -> tuple[Frames, str] | None:
    """The frames a finished run is calibrated on, and what they are in words: its own val frames where it
    validated at the end; else the val split of the dataset it replayed (a few corrected frames have no val
    of their own, and the replayed one is what the model must still know); else none."""
    if validated:
        return data.val, "the frames its training run held out for validation"
    replay = Path(cfg.replay) if cfg.replay else None
    if replay is None or not (replay / "val").is_dir():
        return None
    return (load_split(replay, "val", CALIBRATION_REPLAY_FRAMES, data.classes, evenly=True),
            f"the val frames of {replay.name}")


def _calibration(model: torch.nn.Module, mcfg: zoo.ModelConfig, frames: Frames, reference: str) -> dict:
    """The finished run's softmax temperature and unfamiliarity threshold, fitted on ``frames`` as
    ``sis calibrate`` fits a shipped model's: a fine-tune's confidence then means what it says on the
    pages, instead of the raw logits' or the model it started from (whose temperature is not its own)."""
    from sis.engines import REFERENCE, create_engine
    from sis.training.calibrate import calibrate
    model.eval()
    engine = create_engine(REFERENCE, model, mcfg, next(model.parameters()).device.type)
    pairs = [(n, im.permute(1, 2, 0).cpu().numpy(), m.cpu().numpy().astype("uint8"))
             for n, im, m in zip(frames.names, frames.images, frames.masks)]
    cal = calibrate(engine, pairs)
    return cal.to_dict() | {"fitted_on": f"{reference} ({cal.frames} frames, {cal.pixels} pixels), at the end of "
                                         f"training", "reference": reference}


def train(cfg: TrainConfig, callback: Callable[[Progress], None] | None = None,
          stop: StopFlag | None = None, log: Callable[[str], None] = print) -> dict:
    """Train per ``cfg``; returns {status, out, history, val, steps, digest, rank}. status: done | stopped.

    Writes ``cfg.out`` (a loadable model folder) at the end or when stopped, and
    ``cfg.out/checkpoint`` after every epoch and on stop, for resume.
    """
    # ---- setup: device, data, model, optimizer, schedule, resume
    device = pick_device(cfg.device)
    rank, world = _init_distributed(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    data = _load_data(cfg, device, rank, log)
    cfg = dataclasses.replace(cfg, crop=data.crop)  # the card's recipe and command say the crop it trained with
    model, mcfg, start = _load_model(cfg, data.classes, log)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    optimizer = _optimizer(cfg, model)
    weights = class_weights(data.train, cfg.class_weighting)
    weights = weights.to(device) if weights is not None else None
    ignore = data.classes.void if data.classes.void is not None else -100
    if device.type == "cuda":
        _onto_gpu(data, device)
    steps_per_epoch = math.ceil(len(data.dataset) / (data.per_batch * world))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    epochs = math.ceil(total / steps_per_epoch)
    step, start_epoch, history, elapsed = 0, 0, [], 0.0
    if cfg.resume and ckpt_dir.is_dir():
        meta = load_checkpoint(ckpt_dir, model, optimizer, mcfg)
        step, start_epoch, elapsed = meta["step"], meta["epoch"], meta["elapsed_s"]
        history = [h for h in meta["history"] if not h.get("partial")]
        if rank == 0:
            log(f"resumed from {ckpt_dir} at step {step}, epoch {start_epoch}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp and
                                  amp_dtype(device) == torch.float16)
    t0 = time.perf_counter()

    def report(**kw) -> None:
        if callback and rank == 0:
            callback(Progress(**({"total_steps": total, "epochs": epochs} | kw)))

    # ---- the loop: epochs of batches; validation, a log line and a checkpoint after each epoch
    status, val = "done", None
    seen_imgs, t_window = 0, time.perf_counter()
    _train_mode(net, cfg)
    for epoch in range(start_epoch, epochs):
        # the epoch's order depends only on (seed, epoch): resume replays it exactly
        order = torch.randperm(len(data.dataset), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        order = order.tolist()[rank::world]
        first = step - epoch * steps_per_epoch  # batches of this epoch done before a resume
        run_loss, run_correct, run_pix, n_batches = 0.0, 0, 0, 0
        b = max(first, 0) - 1
        for b in range(max(first, 0), steps_per_epoch):
            if step >= total:
                break
            if stop is not None and stop.is_set():
                status = "stopped"
                break
            if not order[b * data.per_batch:(b + 1) * data.per_batch]:
                break
            imgs, masks, teach = _batch(cfg, data, order, b, step)
            imgs, masks = imgs.to(device), masks.to(device)  # int64 already: SegDataset widens each mask
            teach = pad_to_stride(teach.to(device), mcfg.input_stride)[0] if teach is not None else None
            lr = lr_at(step, total, cfg.lr, cfg.schedule, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, _ = model_input(imgs, mcfg, cfg.channels_last)
            y, _ = pad_to_stride(masks, mcfg.input_stride, value=ignore)
            with autocast(device, cfg.amp):
                logits = net(x)
            loss = combined_loss(logits, y, teach, ignore, weights, cfg.distill_alpha, cfg.distill_temperature)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {step} (lr {lr:.2e}); "
                                    f"lower the learning rate or check the labels")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            with torch.no_grad():
                valid = y != ignore
                correct = int(((logits.argmax(1) == y) & valid).sum())
                pix = int(valid.sum())
            run_loss += loss.item()
            run_correct, run_pix, n_batches = run_correct + correct, run_pix + pix, n_batches + 1
            seen_imgs += len(imgs)
            ips = seen_imgs / max(time.perf_counter() - t_window, 1e-9)
            report(step=step, epoch=epoch + 1, loss=loss.item(), pixel_acc=correct / max(pix, 1), lr=lr,
                   images_per_s=ips * world, eta_s=(total - step) * cfg.batch_size / max(ips, 1e-9))
        if n_batches == 0 and status == "stopped":
            break
        record = {"epoch": epoch + 1, "step": step, "loss": run_loss / max(n_batches, 1),
                  "pixel_acc": run_correct / max(run_pix, 1),
                  "time_s": round(elapsed + time.perf_counter() - t0, 1)}
        if status == "stopped":
            record["partial"] = True
        epoch_done = status != "stopped" and (b == steps_per_epoch - 1 or step >= total)
        _sync_buffers(model, world)
        if data.val is not None and rank == 0 and epoch_done and \
                ((epoch + 1) % cfg.val_every == 0 or step >= total):
            # the last in fp32: the card's figure is the one the engines serve and are measured against
            val = evaluate(model, mcfg, data.val, device, cfg.amp and step < total)
            _train_mode(net, cfg)
            record.update(val_loss=val["loss"], val_miou=val["miou"], val_pixel_acc=val["pixel_acc"])
            report(step=step, epoch=epoch + 1, loss=record["loss"], pixel_acc=record["pixel_acc"], lr=lr,
                   images_per_s=0.0, eta_s=0.0, val_miou=val["miou"], phase="val")
        history.append(record)
        if rank == 0:
            log(f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {record['loss']:.4f} "
                f"pixel_acc {record['pixel_acc']:.4f}" +
                (f" val_miou {record['val_miou']:.4f}" if "val_miou" in record else ""))
            save_checkpoint(ckpt_dir, model, optimizer, {
                "model": mcfg.name, "step": step, "epoch": epoch + 1 if epoch_done else epoch, "history": history,
                "elapsed_s": elapsed + time.perf_counter() - t0, "config": cfg.to_dict()})
        if status == "stopped" or step >= total:
            break

    # ---- finish: the model folder and its card, a last report
    wall = elapsed + time.perf_counter() - t0
    if world > 1:
        dist.barrier()
    if rank == 0:
        last = history[-1] if history else {}
        # labelled frames it did not train on, if any: its confidence is calibrated, a fine-tune's int8 scored on them
        held_out = _calibration_set(cfg, data, val is not None) if status == "done" or cfg.from_folder else None
        calibrates = status == "done" and held_out is not None
        n_stages = 1 + (start is not None) + calibrates + (CARRY_STAGES if cfg.from_folder else 0)
        done_stages = 0

        def finishing(what: str) -> None:  # the minute after the last step says what it does
            nonlocal done_stages
            log(f"finishing: {what}")
            report(step=min(done_stages, n_stages), epoch=last.get("epoch", 0), loss=last.get("loss", float("nan")),
                   pixel_acc=last.get("pixel_acc", float("nan")), lr=0.0, images_per_s=0.0, eta_s=0.0,
                   phase="finish", stage=what, total_steps=n_stages)
            done_stages += 1
        if start is not None:
            finishing(f"averaging {100 * cfg.init_share:.0f}% of the starting model's weights back in" +
                      (f" and scoring it on {len(data.val)} validation frames" if data.val is not None and val else ""))
            val = _mix_in_start(cfg, model, mcfg, start, data, val, device, log)
        card = _card(cfg, mcfg, data, status, step, history, val, wall, world, device)
        if calibrates:
            finishing(f"calibrating its confidence on {len(held_out[0])} of {held_out[1]}")
            card["calibration"] = cal = _calibration(model, mcfg, *held_out)
            log(f"calibrated on {held_out[1]}: temperature {cal['temperature']:.3f}, ECE "
                f"{100 * cal['ece_before']:.2f}% -> {100 * cal['ece_after']:.2f}%")
        finishing("saving the model")
        models.save_model(model, mcfg, out, card, half=cfg.save_half)
        if cfg.from_folder:  # its start's graphs, checked for its weights: it need not run eager
            held = data.val if data.val is not None else data.train
            fast = carried_engines(Path(cfg.init), out, held.images, lambda i: i[None].cpu().numpy(),
                                   "its " + ("validation" if data.val is not None else "training") + " frames",
                                   labelled=held_out,  # a stopped run's last val may be of earlier weights:
                                   eager_miou=val["miou"] if val and status == "done" and _fp32_here(cfg, device)
                                   else None,  # its fp32 graph is then scored instead
                                   say=finishing)
            if fast:
                zoo.update_card(out, fast_path=fast)
        report(step=step, epoch=last.get("epoch", 0), loss=last.get("loss", float("nan")),
               pixel_acc=last.get("pixel_acc", float("nan")), lr=0.0, images_per_s=0.0, eta_s=0.0,
               val_miou=val["miou"] if val else None, phase=status)
    return {"status": status, "out": str(out), "history": history, "val": val, "steps": step,
            "digest": models.weights_digest(model), "rank": rank}
