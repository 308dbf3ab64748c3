"""What a training run trains on: its frames decoded once (train, validation, replay), the teacher's soft
targets where it distils, and the batches the loop draws from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sis import zoo
from sis.classes import ClassSet
from sis.data.augment import SegDataset, build_augment, build_photometric
from sis.data.dataset import Frames, load_classes, load_split, load_splits, validation_frames
from sis.training.config import TrainConfig, TrainingError
from sis.training.distill import check_scale, labels_as_targets, teacher_targets


def load_replay(root: str, limit: int | None, classes) -> Frames:
    """The train frames of a base dataset to mix into every batch: ``limit`` of them, spread evenly (only
    those are read)."""
    if load_classes(root).names != classes.names:
        raise TrainingError(f"the replay dataset {root} has other classes than the training data")
    return load_split(root, "train", limit or None, classes, evenly=True)


@dataclass
class TrainingData:
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


def load_data(cfg: TrainConfig, device: torch.device, rank: int, log: Callable[[str], None]) -> TrainingData:
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
    return TrainingData(classes, frames, val, validation, SegDataset(frames, augment, train_soft, photometric), replay,
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


def onto_gpu(data: TrainingData, device: torch.device) -> None:
    """Augment on the GPU: CamVid's train frames take ~0.7 GB there, and per-image resizes on the
    host would leave a fast GPU waiting on the Python loop."""
    data.train.images = [i.to(device) for i in data.train.images]
    data.train.masks = [m.to(device) for m in data.train.masks]
    if data.dataset.soft is not None:
        data.dataset.soft = [t.to(device) for t in data.dataset.soft]
    torch.backends.cudnn.benchmark = True


def batch(cfg: TrainConfig, data: TrainingData, order: list[int], b: int, step: int):
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
