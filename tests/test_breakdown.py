"""Where a step's time goes (mimkit.bench.breakdown): operator and kernel names sorted into kinds of work, the
arithmetic that turns seconds and FLOPs into shares, efficiencies and the gap to the peak, and a real profile of a
small ViT training step."""

from __future__ import annotations

import pytest
import torch

from mimkit.bench.breakdown import KINDS, Breakdown, flops_by_kind, kind_of, profile_step
from mimkit.bench.flops import count_flops_by_op

NAMES = {
    # CPU operators, as the profiler names them
    "aten::mm": "matmul",
    "aten::addmm": "matmul",
    "aten::linear": "matmul",
    "aten::convolution_backward": "matmul",
    "aten::mkldnn_convolution": "matmul",
    "aten::bmm": "attention",
    "aten::baddbmm": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "aten::_efficient_attention_backward": "attention",
    "aten::gelu_backward": "elementwise",
    "aten::native_layer_norm": "elementwise",
    "aten::add_": "elementwise",
    "aten::sum": "elementwise",
    "aten::mse_loss": "elementwise",
    "aten::_softmax": "elementwise",
    "aten::copy_": "copies",
    "aten::cat": "copies",
    "aten::fill_": "copies",
    "aten::gather": "copies",
    "aten::scatter_add_": "copies",
    "aten::_to_copy": "copies",
    "aten::index_select": "copies",
    "aten::_fused_adamw_": "optimizer",
    "aten::_foreach_norm": "optimizer",
    "Optimizer.step#AdamW.step": "optimizer",
    "aten::view": "other",
    "aten::t": "other",
    "aten::expand": "other",
    "aten::empty_strided": "other",
    "aten::broadcast_tensors": "other",
    "autograd::engine::evaluate_function: AddmmBackward0": "other",
    "c10d::allreduce_": "communication",
    # CUDA kernels (names as H100 traces show them) and inductor's kernels
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
    "__5x_cublas": "matmul",
    "nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNT": "matmul",
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>": "matmul",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
    "cutlass::bfloat16_t>, false, false, false, false, true, true, false, false>(FLASH_NAMESPACE::Flash_fwd_params)": "attention",  # noqa: E501
    "fmha_cutlassB_bf16_aligned_64x64_k64_sm80": "attention",
    "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0": "attention",
    "triton_poi_fused_add_native_layer_norm_0": "elementwise",
    "triton_red_fused_cat_sum_3": "elementwise",
    "triton_tem_fused_mm_1": "matmul",
    "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
    "at::native::GeluType)::{lambda()#2}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul> >": "elementwise",  # noqa: E501
    "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_"
    "cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda(float)#7}>>": "copies",
    "Memcpy HtoD (Pageable -> Device)": "copies",
    "Memset (Device)": "copies",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
    "TensorListMetadata<5>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 5>>": "optimizer",
    "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
    # flop-counter keys
    "aten.mm": "matmul",
    "aten.addmm": "matmul",
    "aten.convolution": "matmul",
    "aten.bmm": "attention",
    "aten._scaled_dot_product_efficient_attention": "attention",
}


@pytest.mark.parametrize("name", list(NAMES))
def test_names_sort_into_their_kind(name):
    assert kind_of(name) == NAMES[name]


def test_shares_efficiency_and_gap_add_up():
    peak = 100.0  # FLOP/s
    b = Breakdown(
        {"matmul": 4.0, "attention": 1.0, "elementwise": 2.0, "copies": 1.0, "idle": 2.0},
        10.0,
        {"matmul": 300.0, "attention": 20.0},
    )
    shares = b.shares()
    assert set(shares) == set(KINDS) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["matmul"] == pytest.approx(0.4) and shares["optimizer"] == 0.0
    assert b.efficiency(peak) == pytest.approx({"matmul": 0.75, "attention": 0.2})
    gap = b.gap(peak)
    assert sum(gap.values()) == pytest.approx(1.0)
    assert gap["useful"] == pytest.approx(0.32)  # 320 FLOPs at 100 FLOP/s = 3.2 s of a 10 s step
    assert gap["matmul"] == pytest.approx(0.1) and gap["attention"] == pytest.approx(0.08)
    assert gap["elementwise"] == pytest.approx(0.2) and gap["idle"] == pytest.approx(0.2)
    # FLOPs a kind could not have run in its time (a noisy peak) never count more than that kind's time
    fast = Breakdown({"matmul": 1.0}, 2.0, {"matmul": 500.0}).gap(peak)
    assert fast["useful"] == pytest.approx(0.5) and fast["matmul"] == 0.0


def test_flops_split_by_kind_of_a_vit():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    x = torch.randn(2, 3, 32, 32)
    by_op = count_flops_by_op(lambda: model(x).sum().backward())
    kinds = flops_by_kind(by_op)
    assert set(kinds) == {"matmul", "attention"} and sum(kinds.values()) == sum(by_op.values())
    # attention: q k^T and attn v over 17 tokens, 192 wide, forward (2 matmuls) and backward (4), 2 blocks
    assert kinds["attention"] == 2 * 2 * 6 * 2 * 17 * 17 * 192


def test_profile_of_a_training_step_covers_the_step():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    x = torch.randn(16, 3, 32, 32)

    def step():
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    # on a shared CPU a step can be preempted between operators, which reads as idle time: of three profiles,
    # the least disturbed one is checked
    found = min((profile_step(step, 2, torch.device("cpu")) for _ in range(3)), key=lambda f: f.seconds["idle"])
    for kind in ("matmul", "attention", "elementwise", "optimizer"):
        assert found.seconds[kind] > 0, kind
    # the operators cover most of the step: what is left (Python between them) is small
    assert 0 <= found.seconds["idle"] < 0.5 * found.step_seconds
    assert sum(found.seconds.values()) == pytest.approx(found.step_seconds, rel=0.05)
    assert found.seconds["matmul"] > found.seconds["optimizer"]


class _Event:
    """What torch.profiler's FunctionEvent offers the device attribution, for a made-up trace."""

    def __init__(self, name, device, us=0.0, kernels=(), annotation=False):
        from types import SimpleNamespace

        self.name, self.is_async, self.is_user_annotation, self.is_legacy = name, False, annotation, False
        self.device_type = torch.autograd.DeviceType.CUDA if device else torch.autograd.DeviceType.CPU
        self.time_range = SimpleNamespace(elapsed_us=lambda: us)
        self.kernels = [SimpleNamespace(name=k, duration=d) for k, d in kernels]


def test_device_time_is_the_kernels_own_named_by_their_operators():
    """Kernel events are the totals, named by the operator that launched them; annotation spans
    (Optimizer.step, inductor's graph call) are no kernels; an operator handed a kernel twice (a collided id)
    cannot count it twice; kernels nobody launched (inductor's, graph replays) count by their own names."""
    from types import SimpleNamespace

    from mimkit.bench.breakdown import _device_entries

    events = [
        _Event("aten::mm", False, kernels=[("sm90_xmma_gemm_bf16", 300.0)]),
        _Event("cudaDeviceSynchronize", False, kernels=[("sm90_xmma_gemm_bf16", 300.0)]),  # collided id
        _Event("aten::_flash_attention_forward", False, kernels=[("flash_fwd_kernel", 100.0)]),
        _Event("aten::empty", False, kernels=[("elementwise_kernel_fill", 5.0)]),  # "other" op: kernel decides
        _Event("Optimizer.step#AdamW.step", False, annotation=True, kernels=[("x", 1e6)]),
        _Event("sm90_xmma_gemm_bf16", True, 300.0),
        _Event("flash_fwd_kernel", True, 100.0),
        _Event("elementwise_kernel_fill", True, 5.0),
        _Event("triton_poi_fused_add_gelu_0", True, 40.0),  # launched by nothing the profiler linked
        _Event("Optimizer.step#AdamW.step", True, 5000.0, annotation=True),  # a GPU annotation span
        _Event("## Call CompiledFxGraph abc ##", True, 9000.0, annotation=True),
    ]
    entries = _device_entries(SimpleNamespace(events=lambda: events))
    assert sum(entries.values()) == pytest.approx(445e-6)
    by_kind = {}
    for (kind, _), seconds in entries.items():
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    assert by_kind == pytest.approx({"matmul": 300e-6, "attention": 100e-6, "copies": 5e-6, "elementwise": 40e-6})
    assert ("attention", "aten::_flash_attention_forward > flash_fwd_kernel") in entries


@pytest.mark.gpu
def test_profile_on_cuda_attributes_kernels():
    device = torch.device("cuda")
    w = torch.nn.Parameter(torch.randn(1024, 1024, device=device))
    opt = torch.optim.AdamW([w], fused=True)
    q = torch.randn(8, 8, 256, 64, device=device, dtype=torch.bfloat16)
    fused = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1)

    def step():
        (torch.randn(4096, 1024, device=device) @ w).relu().sum().backward()
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        fused(q)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    found = profile_step(step, 3, device)
    for kind in ("matmul", "attention", "elementwise", "optimizer"):
        assert found.seconds[kind] > 0, kind
    # the kernels never add up to more than the step (annotation spans are no kernels)
    assert sum(v for k, v in found.seconds.items() if k != "idle") <= found.step_seconds * 1.02


def test_gpu_breakdown_set_against_the_timed_step():
    """The profiler slows the host, not the kernels: set against the timed step, the profiled window's extra wall
    time is no longer counted as the device idling."""
    from mimkit.bench.breakdown import Breakdown

    profiled = Breakdown({"matmul": 0.030, "elementwise": 0.010, "idle": 0.030}, 0.070, {"matmul": 1e12})
    timed = profiled.on_timed_step(0.050)
    assert timed.step_seconds == 0.050 and timed.profiled_seconds == 0.070
    assert timed.seconds["idle"] == pytest.approx(0.010) and timed.seconds["matmul"] == 0.030
    assert sum(timed.shares().values()) == pytest.approx(1.0)
    assert timed.gap(1e15)["useful"] == pytest.approx(1e12 / 1e15 / 0.050)
    assert timed.as_dict(1e15)["profiled_step_seconds"] == 0.070
    faster = profiled.on_timed_step(0.035)  # kernels add up to more than the timed step (noise): no idle
    assert faster.seconds["idle"] == 0.0 and sum(faster.shares().values()) == pytest.approx(1.0)


def test_suite_sets_only_gpu_breakdowns_against_the_timed_step(monkeypatch):
    import torch

    from mimkit.bench import suite as bench_suite
    from mimkit.bench.breakdown import Breakdown
    from mimkit.bench.suite import Case, Timed, _Profiles

    monkeypatch.setattr(bench_suite, "profile_step", lambda *a, **k: Breakdown({"matmul": 0.02, "idle": 0.02}, 0.04))
    case = Case("x", "mimkit", lambda: Timed(lambda: None, None))
    for device, idle in (("cpu", 0.02), ("cuda", 0.005)):
        profiles = _Profiles(4, 1, torch.device(device), 1e12)
        profiles.window(case, Timed(lambda: None, None))
        found, _ = profiles.of(case, 0.025)
        assert found["seconds_per_step"]["idle"] == pytest.approx(idle)
