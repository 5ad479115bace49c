"""Loading timm-layout encoder weights into a model: only a fresh head or pooling norm may differ; anything else is
a clear error naming the mismatched keys."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.beit import Beit, checkpoint_filter_fn

from mimkit.errors import ConfigError

# Keys a classifier or probe may lack in the source (fresh head / pooling norm) or may not use.
_MAY_BE_MISSING = ("head.", "fc_norm.")
_MAY_BE_UNUSED = ("norm.", "fc_norm.")


def resampled_to(encoder: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` fitted to an encoder built for another image size (data.resize_init): a ViT's absolute position
    embedding resampled bicubically over the patch grid (as timm resamples its own checkpoints); the BEiT family's
    relative position bias table by timm's BEiT checkpoint rule. A SwinV2's continuous position bias has no table
    to resize: its weights load as they are."""
    if isinstance(encoder, Beit):
        return checkpoint_filter_fn(dict(state), encoder)
    out = dict(state)
    own = encoder.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and own["pos_embed"].shape != pos.shape:
        prefix = getattr(encoder, "num_prefix_tokens", 1)
        side = int(round((pos.shape[1] - prefix) ** 0.5))
        out["pos_embed"] = resample_abs_pos_embed(
            pos, list(encoder.patch_embed.grid_size), [side, side], num_prefix_tokens=prefix
        )
    return out


def load_encoder_weights(
    encoder: torch.nn.Module, state: dict[str, torch.Tensor], what: str, resample: bool = False
) -> dict[str, list]:
    """Load `state` into a timm ViT, allowing only a fresh head / pooling norm; anything else is a clear error
    naming the mismatched keys. `resample` first fits what depends on the image size (resampled_to)."""
    if resample:
        state = resampled_to(encoder, state)
    own = encoder.state_dict()
    shape_mismatch = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and not k.startswith(_MAY_BE_MISSING)]
    unexpected = [k for k in state if k not in own and not k.startswith(_MAY_BE_UNUSED)]
    if shape_mismatch or missing or unexpected:
        parts = []
        if shape_mismatch:
            parts.append("shape mismatch: " + "; ".join(shape_mismatch[:6]))
        if missing:
            parts.append("missing from the checkpoint: " + ", ".join(missing[:8]))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected[:8]))
        raise ConfigError(
            f"{what} does not match the requested model ({' | '.join(parts)}). Use the source's own "
            "architecture (leave model.* unset) or a matching checkpoint"
        )
    result = encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"fresh": list(result.missing_keys), "unused": [k for k in state if k not in own]}
