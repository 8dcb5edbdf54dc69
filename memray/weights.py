"""Build the encoder: timm architecture + weights from a safetensors file, the model hub, or a random init.

Weights files are only ever read as ``.safetensors`` (no pickle, no ``torch.load``): a checkpoint is data from
outside and unpickling it can run arbitrary code. Every model comes with a provenance record
(:func:`load_model`'s second value) that the embedder writes beside its outputs.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import PurePosixPath
from typing import Any

import torch

from memray.config import EmbedConfig
from memray.storage import open_url

log = logging.getLogger(__name__)

#: Seed of the (CPU) generator used whenever a model is instantiated, so ``random_init`` encoders are reproducible.
INIT_SEED = 0
SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES: frozenset[str] = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar"})
_CONVERT_HINT = (
    'convert it on a trusted machine: python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('IN.pth', map_location='cpu', weights_only=True); "
    "st.save_file(sd.get('model', sd), 'OUT.safetensors')\""
)


class WeightsError(ValueError):
    """The encoder or its weights cannot be provided; the message says what to do."""


def create_model(cfg: EmbedConfig) -> torch.nn.Module:
    """The encoder described by ``cfg``, in eval mode on the CPU (see :func:`load_model`)."""
    return load_model(cfg)[0]


def load_model(cfg: EmbedConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build ``cfg.model`` with timm and load its weights.

    - ``cfg.weights`` set (local path or fsspec URL of a ``.safetensors`` file): the architecture is built with
      ``pretrained=False``, the file's tensors are loaded with ``strict=True`` (after timm's own
      ``checkpoint_filter_fn`` when keys or shapes differ, e.g. OpenAI CLIP / DINOv2 originals or a position
      embedding for another image size); the file's SHA-256 is recorded.
    - neither weights nor ``random_init``: ``timm.create_model(name, pretrained=True)`` through the model hub.
    - ``cfg.random_init``: untrained weights from a fixed seed (:data:`INIT_SEED`); a warning is logged.

    Returns:
        ``(model, provenance)``; provenance is JSON-ready (``source`` is ``file``, ``hub`` or ``random_init``).
    """
    import timm

    if not timm.is_model(cfg.model):
        raise WeightsError(
            f"unknown timm model {cfg.model!r}; list names with "
            "python -c \"import timm; print(timm.list_models('vit_*', pretrained=True))\""
        )
    if cfg.weights:
        model = _build(cfg, pretrained=False)
        data = _read_weights(cfg.weights)
        filtered = load_safetensors_bytes(model, data, cfg.weights)
        info = {"source": "file", "url": cfg.weights, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        info["filtered"] = filtered
    elif cfg.random_init:
        log.warning(
            "random_init: %s has untrained weights (seed %d); C_T from an untrained encoder measures nothing "
            "about semantics — use it only as a baseline",
            cfg.model,
            INIT_SEED,
        )
        model = _build(cfg, pretrained=False)
        info = {"source": "random_init", "seed": INIT_SEED}
    else:
        model = _from_hub(cfg)
        pcfg = getattr(model, "pretrained_cfg", {}) or {}
        info = {"source": "hub", "hf_hub_id": pcfg.get("hf_hub_id"), "tag": pcfg.get("tag"), "url": pcfg.get("url")}
    info["timm_version"] = timm.__version__
    return model.eval(), info


def _build(cfg: EmbedConfig, pretrained: bool) -> torch.nn.Module:
    """``timm.create_model`` with the config's kwargs, initialised from :data:`INIT_SEED` without touching the
    global RNG state."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        try:
            return timm.create_model(cfg.model, pretrained=pretrained, **dict(cfg.model_kwargs))
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            if pretrained:
                raise
            raise WeightsError(f"cannot build {cfg.model!r} with model_kwargs={dict(cfg.model_kwargs)}: {exc}") from exc


def _from_hub(cfg: EmbedConfig) -> torch.nn.Module:
    """Pretrained weights through timm's hub download; any failure explains how to run offline."""
    try:
        return _build(cfg, pretrained=True)
    except Exception as exc:
        raise WeightsError(_offline_message(cfg.model, exc)) from exc


def _offline_message(name: str, exc: BaseException) -> str:
    import timm

    try:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id or name  # type: ignore[union-attr]
    except Exception:
        hub_id = name
    return (
        f"could not get pretrained weights for {name!r} from the model hub ({type(exc).__name__}: {exc}). "
        f"To run without hub access: (1) download model.safetensors of {hub_id} on a machine with access and pass "
        f"--weights PATH_OR_S3_URL (embed.weights in a config); or (2) set HF_HOME to a folder holding a "
        f"pre-populated hub cache (copied from a machine where timm.create_model({name!r}, pretrained=True) ran); "
        "or (3) pass --random-init for an untrained baseline. Set HF_HUB_OFFLINE=1 to fail fast instead of "
        "waiting for network timeouts."
    )


def _read_weights(url: str) -> bytes:
    """The bytes of a ``.safetensors`` file; other suffixes are refused before anything is read."""
    suffix = PurePosixPath(str(url).split("?")[0]).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{url}: {suffix} checkpoints are pickles and are never loaded (unpickling runs code); {_CONVERT_HINT}"
        )
    if suffix != SAFE_SUFFIX:
        raise WeightsError(f"{url}: expected a {SAFE_SUFFIX} file (got {suffix or 'no suffix'}); {_CONVERT_HINT}")
    try:
        with open_url(url, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise WeightsError(f"{url}: weights file not found") from exc


def load_safetensors_bytes(model: torch.nn.Module, data: bytes, source: str = "weights") -> bool:
    """Load safetensors bytes into ``model`` with ``strict=True``.

    When the keys or shapes do not match the model's, timm's ``checkpoint_filter_fn`` of the model's module is
    applied first (original OpenAI-CLIP / DINOv2 key names, position-embedding resampling, …).

    Returns:
        whether the filter was applied.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        state = st_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsError(f"{source}: not a readable safetensors file ({exc})") from exc
    own = model.state_dict()
    filtered = False
    if _mismatch(state, own):
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, model)
                filtered = True
            except Exception as exc:
                raise WeightsError(
                    f"{source}: keys do not match {type(model).__name__} and timm's filter failed: {exc}"
                ) from exc
    problems = _mismatch(state, own)
    if problems:
        raise WeightsError(
            f"{source}: does not fit {type(model).__name__} ({problems}); check the model name and model_kwargs "
            "(e.g. img_size, num_classes) match the checkpoint, and that it holds timm-format weights (the "
            "model.safetensors of the timm/<model name> hub repository)"
        )
    model.load_state_dict(state, strict=True)
    return filtered


def _mismatch(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """A short description of missing/unexpected/shape-mismatched keys ('' when they match)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", … ({len(keys)} in all)" if len(keys) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)
