"""The model zoo: the registry of encoder x decoder pairs, their configs, and each model's card.

    registry   names, specs, configs, model folders, the hub (no torch)
    card       card.json read and written as one typed class (no torch)
    models     building, loading and saving PyTorch models (smp)
    preprocess the one input contract between images and a PyTorch model
    runtime    devices and mixed precision

This face holds the torch-free names; ``models``, ``preprocess`` and ``runtime`` import torch.
"""
from sis.zoo.card import (ADAPTATION_KEYS, DEV_SET, RECIPE_KEYS, EngineRecord, FastPath, ModelCard, ModeRecord,
                          RealFramesRecord, card_as_written, derived_card, keep_real_frames, read_card,
                          recipe_defaults, update_card, write_card)
from sis.zoo.registry import (ARCHS, DEFAULT_MODEL, ENCODERS, FRESH_INITS, HUB_HOST, HUB_PORT, IMAGENET_MEAN, IMAGENET_STD, MODELS,
                              PAPER_MODELS, WEIGHTS_DIR, ModelConfig, ModelError, ModelSpec, OfflineError, get_spec,
                              hub_reachable, list_models, make_config, read_config, resolve, shipped_models)
