"""Each adapter over a private piece of torch or timm (mimkit.compat), run against the installed versions: when a
release moves one of them, these tests fail first and say which."""

from __future__ import annotations

import re
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from mimkit import compat

ROOT = Path(__file__).resolve().parents[1]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_timm_is_within_the_pinned_range():
    """pyproject.toml pins timm to the range compat.TIMM_RANGE names, and the installed timm is inside it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("timm")]
    assert spec == "timm" + compat.TIMM_RANGE
    low, high = re.match(r">=([\d.]+),<([\d.]+)", compat.TIMM_RANGE).groups()
    assert _version(low) <= _version(timm.__version__) < _version(high), timm.__version__


def test_vit_pos_embed_adds_the_class_token_and_the_position_embedding():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=0)
    tokens = torch.randn(2, 16, vit.embed_dim)
    expected = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], dim=1) + vit.pos_embed
    torch.testing.assert_close(compat.vit_pos_embed(vit, tokens), expected)


def test_vit_pos_embed_names_timm_when_it_is_gone():
    with pytest.raises(compat.LibraryChanged, match=r"timm .*_pos_embed.*mimkit is tested with timm >=1\.0"):
        compat.vit_pos_embed(nn.Linear(2, 2), torch.zeros(1, 2))


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "full_backward", "full_backward_pre"])
def test_has_own_hooks_sees_every_kind_of_hook_and_only_on_the_module_itself(kind):
    inner = nn.Linear(2, 2)
    outer = nn.Sequential(inner)
    assert not compat.has_own_hooks(inner) and not compat.has_own_hooks(outer)
    handle = getattr(inner, f"register_{kind}_hook")(lambda *args: None)
    assert compat.has_own_hooks(inner) and not compat.has_own_hooks(outer)
    handle.remove()
    assert not compat.has_own_hooks(inner)


def test_fused_adamw_takes_grad_scale_and_found_inf():
    """The two inputs the Engine hands to fused AdamW: found_inf=1 leaves the weights alone, grad_scale divides
    the gradients (so a step with grad_scale 2 on gradient 2g is the step on g)."""
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    assert compat.fused_step_divides_gradients(opt)
    assert not compat.fused_step_divides_gradients(torch.optim.AdamW([nn.Parameter(torch.ones(1))]))
    w.grad = torch.full((3,), 2.0)
    compat.fused_step(opt, torch.tensor(1.0))
    assert torch.equal(w.detach(), torch.ones(3)) and not hasattr(opt, "found_inf")
    ref = nn.Parameter(torch.ones(3))
    ref_opt = torch.optim.AdamW([ref], lr=0.1, fused=True)
    ref.grad = torch.ones(3)
    ref_opt.step()
    w.grad = torch.full((3,), 2.0)
    compat.fused_step(opt, torch.tensor(0.0), grad_scale=torch.tensor(2.0))
    torch.testing.assert_close(w.detach(), ref.detach())
    assert not hasattr(opt, "grad_scale")
    with pytest.raises(compat.LibraryChanged, match="grad_scale"):
        compat.fused_step(torch.optim.SGD([ref], lr=0.1), torch.tensor(0.0))


def test_foreach_lerp_is_an_exponential_moving_average():
    assert hasattr(torch, "_foreach_mul_") and hasattr(torch, "_foreach_add_")  # the multi-tensor kernels exist
    targets = [torch.ones(3), torch.zeros(2)]
    sources = [torch.zeros(3), torch.ones(2)]
    compat.foreach_lerp_(targets, sources, keep=0.9)
    torch.testing.assert_close(targets[0], torch.full((3,), 0.9))
    torch.testing.assert_close(targets[1], torch.full((2,), 0.1))


def test_live_worker_processes_of_a_process_pool():
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(abs, -1).result() == 1
        (process,) = compat.live_worker_processes(pool)
        assert process.is_alive()
    assert compat.live_worker_processes(object()) == []
