"""fp8 training of the model's large Linear layers (`hardware.fp8=true`): tensorwise dynamic scaling through
`torch._scaled_mm`.

The one idea: each of a Linear's three matmuls (the output, the input's gradient, the weight's gradient) runs on
fp8 copies of its two operands, made just before the matmul with ONE scale per tensor, chosen from the tensor's
current absolute maximum so that amax lands on the format's largest value; `_scaled_mm` multiplies the inverse
scales back in and returns full precision. Activations and weights use e4m3 (more mantissa), gradients e5m2
(more range). Nothing else changes: the master weights stay what they were (fp32) under the same state-dict
names, and a layer in eval mode runs its ordinary full-precision forward, so validation, sampling, checkpoints
and export never see fp8, and the FLOP count (by parameter role, `GPT.estimate_flops`) is the same with or
without conversion.

Which layers (the reference's rule, `fp8_eligible`): an nn.Linear whose in and out features are both divisible
by 16 (the fp8 kernels' alignment) and whose smaller side is at least 128 (below that, quantising costs more
than the matmul saves). In our GPT: c_q, c_k, c_v, c_proj, c_fc, mlp.c_proj, and lm_head when the vocabulary
is divisible by 16 (32,768 is); never the value-embedding gate (12 or 32 -> n_kv_head) or a smear gate (24 -> 1).

fp8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); `check_fp8` is
the refusal run at validation. `_scaled_mm` also runs on CPU in recent PyTorch, which the tests use.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.gpt import Linear

E4M3 = torch.float8_e4m3fn  # inputs and weights: max 448
E5M2 = torch.float8_e5m2  # gradients: max 57344
EPS = 1e-12  # amax floor: an all-zero tensor gets a finite scale
MIN_CAPABILITY = (8, 9)
ALIGN = 16  # fp8 matmul dimensions must be multiples of this
MIN_FEATURES = 128


# -----------------------------------------------------------------------------------------------------------
# which layers


def fp8_eligible(module: nn.Module) -> bool:
    """True for an nn.Linear the fp8 path takes: in and out divisible by 16 and min(in, out) >= 128."""
    if not isinstance(module, nn.Linear):
        return False
    n_in, n_out = module.in_features, module.out_features
    return n_in % ALIGN == 0 and n_out % ALIGN == 0 and min(n_in, n_out) >= MIN_FEATURES


def fp8_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the Linear layers `convert_to_fp8` would convert (or has converted)."""
    return [name for name, m in model.named_modules() if fp8_eligible(m)]


# -----------------------------------------------------------------------------------------------------------
# scaling maths


@torch.no_grad()
def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x in fp8, inverse scale): x * scale saturated to the format's range, scale = fp8_max / amax(|x|).

    The scale is computed in float64 and rounded once to float32 (eager and compiled graphs then agree); the
    clamp saturates, since an out-of-range cast is not guaranteed to.
    """
    fp8_max = torch.finfo(dtype).max
    amax = x.abs().amax().double().clamp(min=EPS)
    scale = (fp8_max / amax).float()
    q = (x.float() * scale).clamp(-fp8_max, fp8_max).to(dtype).contiguous()
    return q, scale.reciprocal()


def dequantize(q: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """The float32 values an fp8 tensor and its inverse scale stand for (what `_scaled_mm` multiplies)."""
    return q.float() * inv_scale


def _col_major(x: torch.Tensor) -> torch.Tensor:
    """Same values, column-major strides: `_scaled_mm` wants its second operand laid out that way."""
    return x.t().contiguous().t()


def _pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero rows appended to an fp8 matrix up to a multiple of `multiple` rows (0x00 is +0 in both formats;
    padding goes through uint8 because not every kernel takes fp8 tensors)."""
    extra = -x.size(0) % multiple
    if not extra:
        return x
    return F.pad(x.view(torch.uint8), (0, 0, 0, extra)).view(x.dtype)


@torch._dynamo.allow_in_graph  # one opaque node for torch.compile (it cannot fuse into it, nor break it up)
class Fp8Matmul(torch.autograd.Function):
    """y = x @ w.T with all three matmuls in fp8. x: (M, K) in the compute dtype, w: (N, K) master weight.

    Saves the fp8 copies (not the full-precision input) for backward. The weight's gradient comes back in the
    weight's own dtype (fp32 master weights accumulate it unrounded).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x8, x_inv = quantize(x, E4M3)
        w8, w_inv = quantize(w, E4M3)
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.w_dtype = w.dtype
        # w8 is (N, K) row-major, so w8.t() is already the column-major (K, N) operand; fast accumulation is
        # the usual choice for the forward (backward keeps full accumulation for the gradients)
        return torch._scaled_mm(x8, w8.t(), scale_a=x_inv, scale_b=w_inv, out_dtype=x.dtype, use_fast_accum=True)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        g8, g_inv = quantize(grad_out, E5M2)
        # dL/dx = g @ w: (M, N) @ (N, K)
        grad_x = torch._scaled_mm(g8, _col_major(w8), scale_a=g_inv, scale_b=w_inv, out_dtype=grad_out.dtype,
                                  use_fast_accum=False)
        # dL/dw = g.T @ x: (N, M) @ (M, K); M (tokens) is the contraction, which must be a multiple of 16:
        # zero rows added to both sides change nothing (variable-length chat batches need this)
        g8p, x8p = _pad_rows(g8, ALIGN), _pad_rows(x8, ALIGN)
        grad_w = torch._scaled_mm(g8p.t().contiguous(), _col_major(x8p), scale_a=g_inv, scale_b=x_inv,
                                  out_dtype=ctx.w_dtype, use_fast_accum=False)
        return grad_x, grad_w


# -----------------------------------------------------------------------------------------------------------
# the layer and the conversion


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a plain Linear would compute in here: autocast's when it is on, else the input's."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class Fp8Linear(Linear):
    """The model's Linear with an fp8 training forward. Same parameters (shared, not copied) and state-dict
    keys; in eval mode (validation, sampling) it is exactly the full-precision layer it replaced."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        x = x.to(_compute_dtype(x))
        shape = x.shape
        y = Fp8Matmul.apply(x.reshape(-1, shape[-1]), self.weight)
        y = y.reshape(*shape[:-1], y.size(-1))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8Linear":
        """An Fp8Linear holding `linear`'s own weight and bias Parameters (the shell is built on meta: no copy)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new


def convert_to_fp8(model: nn.Module) -> list[str]:
    """Replace every `fp8_eligible` Linear of `model` in place by an Fp8Linear sharing its parameters; returns
    the converted names. Convert before torch.compile; an optimizer built before or after sees the same
    Parameters either way. Converting twice changes nothing."""
    converted = []
    for name in fp8_layer_names(model):
        module = model.get_submodule(name)
        if isinstance(module, Fp8Linear):
            converted.append(name)
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Fp8Linear.from_linear(module))
        converted.append(name)
    return converted


def describe_conversion(model: nn.Module, converted: Sequence[str]) -> str:
    """One line for the run log: how many Linear layers (and what share of their weights) run in fp8."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(m.weight.numel() for m in linears)
    fp8 = sum(model.get_submodule(n).weight.numel() for n in converted)
    kept = len(linears) - len(converted)
    return (f"fp8: {len(converted)} of {len(linears)} Linear layers train in fp8 ({fp8 / max(total, 1):.1%} of "
            f"their weights; {kept} too small or unaligned stay in full precision); evaluation and sampling "
            f"run in full precision")


# -----------------------------------------------------------------------------------------------------------
# can this machine do it


REQUIREMENT = ("hardware.fp8=true needs an NVIDIA GPU of compute capability 8.9 or newer "
               "(Ada, Hopper, Blackwell: L4/L40, H100/H200, B200, GB10)")


def fp8_unsupported_reason(accelerator: str, precision: str = "bf16-mixed", *, check_device: bool = True,
                           devices: Sequence[tuple[str, tuple[int, int]]] | None = None) -> str | None:
    """Why fp8 training cannot run with this profile on this machine, or None when it can.

    `devices`: (name, (major, minor)) of every visible CUDA GPU (default: looked up). check_device=False checks
    only what the configuration itself rules out (planning a GPU run on another machine).
    """
    if accelerator in ("cpu", "mps"):
        return f"hardware.accelerator={accelerator} has no fp8 matmuls"
    if precision == "transformer-engine":
        return "hardware.precision=transformer-engine brings its own fp8; use it or hardware.fp8, not both"
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no fp8 matmul (torch._scaled_mm)"
    if not check_device:
        return None
    if devices is None:
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
        devices = [(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                   for i in range(torch.cuda.device_count())]
    if not devices:
        return "no CUDA GPU is visible"
    for name, capability in devices:
        if tuple(capability) < MIN_CAPABILITY:
            return f"{name} is sm_{capability[0]}{capability[1]}"
    return None


def check_fp8(accelerator: str, precision: str = "bf16-mixed", *, check_device: bool = True,
              devices: Sequence[tuple[str, tuple[int, int]]] | None = None) -> None:
    """Raise the one-line NanochatError when `fp8_unsupported_reason` finds a reason."""
    reason = fp8_unsupported_reason(accelerator, precision, check_device=check_device, devices=devices)
    if reason:
        raise NanochatError(f"{REQUIREMENT}; {reason}")


__all__ = ["Fp8Linear", "Fp8Matmul", "check_fp8", "convert_to_fp8", "dequantize", "describe_conversion",
           "fp8_eligible", "fp8_layer_names", "fp8_unsupported_reason", "quantize"]
