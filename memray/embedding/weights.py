"""Build the encoder: timm architecture + weights from a safetensors file, the model hub, or a random init.

Weights files are only ever read as ``.safetensors`` (no pickle, no ``torch.load``): a checkpoint is data from
outside and unpickling it can run arbitrary code. Every model comes with a provenance record
(:func:`load_model`'s second value) that the embedder writes beside its outputs.

memray never runs a classifier head: every model is built without one (timm's default model, then
``reset_classifier(0)``, unless ``model_kwargs`` set ``num_classes``), so checkpoints with or without head tensors
load. :func:`preflight_model` checks the name, the weights file's safetensors header and its fit to the
architecture (built on the meta device) without reading the tensors. Hub weights are recorded by what was loaded:
the hub id, the revision found in the hub cache and :func:`state_digest` of the state dict
(:mod:`memray.embedding.identity`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from memray.embedding.config import EmbedConfig
from memray.io.safetensors_io import (
    ST_DTYPES,
    WeightsError,
    read_safetensors_header,
    read_weights,
)

log = logging.getLogger(__name__)

#: Seed of the (CPU) generator used whenever a model is instantiated, so ``random_init`` encoders are reproducible.
INIT_SEED = 0


def create_model(cfg: EmbedConfig) -> torch.nn.Module:
    """The encoder described by ``cfg``, in eval mode on the CPU (see :func:`load_model`)."""
    return load_model(cfg)[0]


def load_model(
    cfg: EmbedConfig, storage_options: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build ``cfg.model`` with timm (without a classifier head) and load its weights.

    - ``cfg.weights`` set (local path or fsspec URL of a ``.safetensors`` file): the architecture is built with
      ``pretrained=False``, the file's tensors are loaded with ``strict=True`` (see :func:`fit_state`: head tensors
      are dropped, timm's ``checkpoint_filter_fn`` is applied when keys or shapes differ); the file's SHA-256 is
      recorded.
    - neither weights nor ``random_init``: ``timm.create_model(name, pretrained=True)`` through the model hub; the
      hub id, the cached revision (when the hub cache holds the file) and :func:`state_digest` are recorded.
    - ``cfg.random_init``: untrained weights from a fixed seed (:data:`INIT_SEED`); a warning is logged.

    Returns:
        ``(model, provenance)``; provenance is JSON-ready (``source`` is ``file``, ``hub`` or ``random_init``).
    """
    import timm

    _check_name(cfg.model)
    if cfg.weights:
        model = _build(cfg, pretrained=False)
        data = read_weights(cfg.weights, storage_options)
        fit = load_safetensors_bytes(model, data, cfg.weights)
        info = {"source": "file", "url": cfg.weights, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        info.update(fit)
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
        info.update(revision=_hub_revision(pcfg), state_sha256=state_digest(model))
    info["timm_version"] = timm.__version__
    return model.eval(), info


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict: every entry's name, dtype, shape and bytes, in name order (64 hex chars)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        sha.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return sha.hexdigest()


def _hub_revision(pcfg: Mapping[str, Any]) -> str | None:
    """The commit of the hub cache snapshot holding the model's weights file (``None`` when not found there)."""
    hub_id = pcfg.get("hf_hub_id")
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = str(hub_id).partition("@")
    names = [pcfg.get("hf_hub_filename")] if pcfg.get("hf_hub_filename") else []
    for name in [*names, "model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"]:
        path = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(path, str):  # .../snapshots/<commit>/<name>
            return Path(path).parent.name
    return None


def preflight_model(cfg: EmbedConfig, storage_options: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict]:
    """The encoder's architecture on the meta device (no memory, no init) and a check of its weights, cheaply.

    Checks the timm name, then for ``cfg.weights``: suffix, existence, the safetensors header (two ranged reads:
    the 8-byte length and the JSON header; tensor data is never read) and that its names and shapes fit the model
    after the same head-key and ``checkpoint_filter_fn`` steps as the loader (:func:`fit_state`, run on meta
    tensors). Hub weights are not contacted: only the name and the architecture are checked.

    Returns:
        ``(meta model, record)``; record: ``source``, and for files ``url``, ``bytes`` (file size),
        ``header_bytes``, ``tensors``, ``filtered``, ``dropped_head_keys``.
    """
    _check_name(cfg.model)
    model = _build(cfg, pretrained=False, device="meta")
    if not cfg.weights:
        return model, {"source": "random_init" if cfg.random_init else "hub"}
    header = read_safetensors_header(cfg.weights, storage_options)
    state = {
        name: torch.empty(shape, dtype=ST_DTYPES.get(dtype, torch.float32), device="meta")
        for name, (dtype, shape) in header["tensors"].items()
    }
    _, fit = fit_state(state, model, cfg.weights, simulate=True)
    record = {"source": "file", "url": cfg.weights, "bytes": header["bytes"], "header_bytes": header["header_bytes"]}
    return model, {**record, "tensors": len(state), **fit}


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise WeightsError(
            f"unknown timm model {name!r} (embed.model / --model); list names with "
            "python -c \"import timm; print(timm.list_models('vit_*', pretrained=True))\""
        )


def _build(cfg: EmbedConfig, pretrained: bool, device: str | None = None) -> torch.nn.Module:
    """``timm.create_model`` with the config's kwargs, initialised from :data:`INIT_SEED` without touching the
    global RNG state, then stripped of its classifier head (:func:`_strip_head`); ``device="meta"`` builds
    shapes only."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        try:
            with torch.device(device) if device else contextlib.nullcontext():
                model = timm.create_model(cfg.model, pretrained=pretrained, **dict(cfg.model_kwargs))
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            if pretrained:
                raise
            raise WeightsError(f"cannot build {cfg.model!r} with model_kwargs={dict(cfg.model_kwargs)}: {exc}") from exc
    return _strip_head(model, cfg)


def _strip_head(model: torch.nn.Module, cfg: EmbedConfig) -> torch.nn.Module:
    """Remove the classifier (``reset_classifier(0)``) unless ``model_kwargs`` set ``num_classes``.

    The modules are those of ``num_classes=0``; building timm's default model first keeps the seeded init of every
    other weight (``random_init`` encoders, earlier runs) and a hub download's strict key check unchanged.
    """
    if "num_classes" not in dict(cfg.model_kwargs) and getattr(model, "num_classes", 0):
        model.reset_classifier(0)
    return model


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


def load_safetensors_bytes(model: torch.nn.Module, data: bytes, source: str = "weights") -> dict[str, Any]:
    """Load safetensors bytes into ``model`` with ``strict=True``, after :func:`fit_state`.

    Returns:
        ``{"filtered": whether timm's filter was applied, "dropped_head_keys": [...]}``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        state = st_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsError(f"{source}: not a readable safetensors file ({exc})") from exc
    state, fit = fit_state(state, model, source)
    model.load_state_dict(state, strict=True)
    return fit


def fit_state(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str = "weights", simulate: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Make a checkpoint's tensors fit ``model``'s state dict, or raise naming what does not fit.

    1. Tensors of a classifier head the model does not have (``pretrained_cfg["classifier"]``, e.g. ``head.*``)
       are dropped: memray never uses the head.
    2. If names or shapes still differ, timm's ``checkpoint_filter_fn`` of the model's module is applied (original
       OpenAI-CLIP / DINOv2 key names, position-embedding and patch-embedding resampling, …), then step 1 again.
    3. Any remaining missing, unexpected or mis-shaped key raises :class:`WeightsError`.

    ``simulate=True`` (the preflight, on meta tensors of the header's shapes): a filter that raises cannot be told
    apart from one that needs real data, so the check is left to the load (logged and recorded as ``deferred``).
    """
    own = model.state_dict()
    state, dropped = _drop_head(state, own, model)
    filtered = False
    if _mismatch(state, own):
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, model)
            except Exception as exc:
                if simulate:
                    log.warning("%s: timm's checkpoint filter needs the tensors (%s); checked at load", source, exc)
                    return state, {"filtered": None, "dropped_head_keys": dropped, "deferred": f"{exc}"}
                raise WeightsError(
                    f"{source}: keys do not match {type(model).__name__} and timm's filter failed: {exc}"
                ) from exc
            filtered = True
            state, more = _drop_head(state, own, model)
            dropped = sorted({*dropped, *more})
    problems = _mismatch(state, own)
    if problems:
        raise WeightsError(
            f"{source}: does not fit {type(model).__name__} ({problems}); check the model name and model_kwargs "
            "(e.g. img_size, depth, embed_dim) match the checkpoint, and that it holds timm-format weights (the "
            "model.safetensors of the timm/<model name> hub repository)"
        )
    return state, {"filtered": filtered, "dropped_head_keys": dropped}


def _drop_head(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` without the classifier-head entries ``own`` lacks, and the sorted dropped names."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    prefixes = (heads,) if isinstance(heads, str) else tuple(heads)
    dropped = {k for k in state if k not in own and any(k == p or k.startswith(f"{p}.") for p in prefixes)}
    return {k: v for k, v in state.items() if k not in dropped}, sorted(dropped)


def _mismatch(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    """A short description of missing/unexpected/shape-mismatched keys ('' when they match)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", … ({len(keys)} in all)" if len(keys) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)
