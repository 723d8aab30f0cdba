"""One engine for the daemon's whole life: VGG-19 weights loaded once, a Stylizer per job.

The weights are read (and checked) once, when the daemon starts, so that `nstd run` refuses
to start when they cannot be resolved instead of failing every job later. Each job may bring
its own settings (a sidecar); `EngineCache.stylizer(config)` hands out a `Stylizer` for them,
reusing the truncated feature extractor for the same layers and pooling (building one copies
the weights, which takes longer than a small job).

What a job may not change: the weights file and the device are the daemon's (see
`nstd.daemon.intake`, which refuses those sidecar keys).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import Tensor

from nstd.config import Config, ModelConfig
from nstd.engine.features import VGGFeatures
from nstd.engine.stylizer import Stylizer, device_options, resolve_device
from nstd.engine.weights import describe_weights, load_vgg19_state_dict

log = logging.getLogger(__name__)

# Distinct (layers, pooling) extractors kept; jobs rarely differ, and each costs a copy of
# the weights on the device.
MAX_EXTRACTORS = 3


class EngineCache:
    """The loaded VGG-19 state dict, the device, and a few feature extractors built from it."""

    def __init__(self, model: ModelConfig, state_dict: dict[str, Tensor],
                 device: torch.device) -> None:
        self.model = model
        self.device = device
        self._state = state_dict
        self._extractors: OrderedDict[tuple[tuple[str, ...], str], VGGFeatures] = OrderedDict()

    @classmethod
    def load(cls, model: ModelConfig) -> EngineCache:
        """Resolve the device and load the weights now.

        Raises `ConfigError` (CUDA asked for but missing) or `WeightsError` (weights missing,
        unreadable or not VGG-19).
        """
        device = resolve_device(model.device)
        state = load_vgg19_state_dict(model.weights)
        log.info("%s; device %s", describe_weights(model.weights), device)
        return cls(model, state, device)

    def features(self, layers: tuple[str, ...], pooling: str) -> VGGFeatures:
        """A frozen extractor for these layers, built once and reused (LRU of a few)."""
        key = (tuple(sorted(set(layers))), pooling)
        found = self._extractors.get(key)
        if found is not None:
            self._extractors.move_to_end(key)
            return found
        extractor = VGGFeatures(self._state, key[0], pooling=pooling)
        self._extractors[key] = extractor
        while len(self._extractors) > MAX_EXTRACTORS:
            self._extractors.popitem(last=False)
        return extractor

    def stylizer(self, config: Config) -> Stylizer:
        """A Stylizer for one job's settings (its style section, pooling and precision).

        bf16, channels_last and compile apply on CUDA only (`nstd.engine.stylizer.device_options`).
        """
        style = config.style
        features = self.features((style.content_layer, *style.style_layers),
                                 config.model.pooling)
        return Stylizer(features, style, self.device, **device_options(config.model, self.device))
