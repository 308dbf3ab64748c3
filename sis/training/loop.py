"""Training: the loop, read top to bottom as setup, loop and finish.

Defaults follow the SIS-CNN paper: Adam at lr 2e-4, cross-entropy ignoring void,
horizontal + vertical flips, validation after every epoch, loss / pixel accuracy /
mIoU logged per epoch. Run data-parallel with ``torchrun --nproc_per_node N -m sis train``."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from sis import zoo
from sis.classes import ClassSet
from sis.data.dataset import class_weights
from sis.evaluation.evaluate import evaluate
from sis.training.checkpoints import load_checkpoint, save_checkpoint
from sis.training.config import Progress, StopFlag, TrainConfig, TrainingError, TrainResult
from sis.training.data import batch, load_data, onto_gpu
from sis.training.distill import combined_loss
from sis.training.finish import Ended, finish
from sis.zoo import models
from sis.zoo.preprocess import model_input, pad_to_stride
from sis.zoo.runtime import amp_dtype, autocast, pick_device


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


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.optimizer)
    if opt_cls is None:
        raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose adam or adamw")
    return opt_cls([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train_mode(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Training mode, with the BatchNorm layers normalising by their running statistics where those are held."""
    model.train()
    if cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(cfg: TrainConfig, callback: Callable[[Progress], None] | None = None,
          stop: StopFlag | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train per ``cfg``; returns what it did (status: done | stopped, the folder, history, last val figures).

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
    data = load_data(cfg, device, rank, log)
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
        onto_gpu(data, device)
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
            imgs, masks, teach = batch(cfg, data, order, b, step)
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

    # ---- finish: the model folder and its card (training/finish.py), a last report
    wall = elapsed + time.perf_counter() - t0
    if world > 1:
        dist.barrier()
    if rank == 0:
        last = history[-1] if history else {}
        said = 0

        def say(stage: str, stages: int) -> None:  # the minute after the last step says what it does
            nonlocal said
            report(step=min(said, stages), epoch=last.get("epoch", 0), loss=last.get("loss", float("nan")),
                   pixel_acc=last.get("pixel_acc", float("nan")), lr=0.0, images_per_s=0.0, eta_s=0.0,
                   phase="finish", stage=stage, total_steps=stages)
            said += 1
        val = finish(Ended(cfg, model, mcfg, data, status, step, history, val, wall, world, device), start, say, log)
        report(step=step, epoch=last.get("epoch", 0), loss=last.get("loss", float("nan")),
               pixel_acc=last.get("pixel_acc", float("nan")), lr=0.0, images_per_s=0.0, eta_s=0.0,
               val_miou=val["miou"] if val else None, phase=status)
    return TrainResult(status, str(out), history, val, step, models.weights_digest(model), rank)
