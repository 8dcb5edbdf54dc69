"""Which weights an encoder has, by content: the part of a weights record that keys embeddings, and its check.

A weights record (:func:`memray.embedding.weights.load_model`'s provenance, or the job's preflight record) says
where the weights came from; its *identity* says what they are:

- a file (``embed.weights``): ``{"sha256": …}`` of the file's bytes, streamed once by the job's preflight
  (:func:`memray.io.safetensors_io.weights_digest`) and checked by every worker against the bytes it loads;
- the model hub: ``{"state_sha256": …}`` of the loaded state dict (:func:`memray.embedding.weights.state_digest`),
  resolved when the job starts and checked by every worker;
- ``random_init``: ``None``: the weights follow from the config (model, kwargs, seed), so the config keys them.

No torch here: the job's keys are computed before (and without) any model.
"""

from __future__ import annotations

from typing import Any

SOURCE_FILE, SOURCE_HUB, SOURCE_RANDOM = "file", "hub", "random_init"
_DIGEST_FIELD = {SOURCE_FILE: "sha256", SOURCE_HUB: "state_sha256"}
SHOWN_HEX = 12  # hex chars of a digest shown in messages


class WeightsChangedError(ValueError):
    """A worker loaded other weights than the job was planned with; the message names the file or hub id."""


def weights_identity(record: dict[str, Any] | None) -> dict[str, str] | None:
    """``{"sha256": hex}`` (file), ``{"state_sha256": hex}`` (hub), or ``None`` (random init, or not known yet)."""
    field = _DIGEST_FIELD.get(str((record or {}).get("source")))
    if field is None or not (record or {}).get(field):
        return None
    return {field: str(record[field])}  # type: ignore[index]


def describe_weights(record: dict[str, Any] | None) -> str:
    """One phrase naming the weights: ``embed.weights=PATH`` or ``hub weights timm/…`` (for messages)."""
    record = record or {}
    if record.get("source") == SOURCE_FILE:
        return f"embed.weights={record.get('url')}"
    if record.get("source") == SOURCE_HUB:
        return f"the hub weights of {record.get('hf_hub_id') or record.get('url') or 'the model'}"
    return "the random-init weights"


def show_identity(identity: dict[str, str] | None) -> str:
    """``sha256 0123456789ab…`` (or ``(not recorded)``)."""
    if not identity:
        return "(not recorded)"
    (field, value), *_ = identity.items()
    return f"{field} {value[:SHOWN_HEX]}…"


def weights_mismatch(loaded: dict[str, Any], expected: dict[str, Any] | None, who: str = "a worker") -> str:
    """One line saying how the ``loaded`` weights differ from the ``expected`` ones (``""``: the same, or nothing to
    check): the file (or hub id) and the planned → loaded digests."""
    want, got = weights_identity(expected), weights_identity(loaded)
    if want is None or got == want:
        return ""
    change = f"{show_identity(want)} when the job started, {show_identity(got)} when {who} loaded it"
    if (expected or {}).get("source") == SOURCE_FILE:
        return (
            f"{describe_weights(expected)}: the weights file changed while the job ran ({change}); nothing was mixed: "
            "rerun once the file is final to embed with it"
        )
    revisions = f"revision {expected.get('revision')} → {loaded.get('revision')}"  # type: ignore[union-attr]
    return (
        f"{describe_weights(expected)}: {who} resolved other weights ({change}; {revisions}); the nodes' hub caches "
        "differ: pin one revision with embed.model_kwargs: {pretrained_cfg_overlay: {hf_hub_id: 'ID@REVISION'}}"
    )


def check_same_weights(loaded: dict[str, Any], expected: dict[str, Any] | None, who: str = "a worker") -> None:
    """Refuse weights whose identity differs from the one the job was planned with (:func:`weights_mismatch`).

    Raises:
        WeightsChangedError: one line naming the file (or hub id) and the planned → loaded digests.
    """
    message = weights_mismatch(loaded, expected, who)
    if message:
        raise WeightsChangedError(message)
