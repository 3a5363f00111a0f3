"""LoRA/DoRA layers with PEFT's meaning, and how an adapted layer folds into one plain weight.

An adapter must compute the same thing wherever it is loaded (our model, PEFT, vLLM) and after it is
merged. PEFT's rule for DoRA (``peft.tuners.lora.dora.DoraLinearLayer``) on a layer with a bias is

    y = m / ||W + s B A||_row * (W x + s B A x) + b

with the bias outside the magnitude ratio; torchtune's ``DoRALinear`` scales the bias too, which no
merge into (W', b) can reproduce and which PEFT would read differently. ``DoRALinear`` here keeps
torchtune's parameters, names and initialization and only moves the bias out.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchao.dtypes.nf4tensor import NF4Tensor, linear_nf4
from torchtune.modules.peft import DoRALinear as _TorchtuneDoRALinear
from torchtune.modules.peft import LoRALinear

ADAPTER_PARAM_SUFFIXES = (".lora_a.weight", ".lora_b.weight", ".magnitude")


class DoRALinear(_TorchtuneDoRALinear):
    """torchtune's ``DoRALinear`` with PEFT's bias rule: the bias is added after the magnitude ratio.

    Same arguments, parameters (``weight``, ``bias``, ``lora_a``, ``lora_b``, ``magnitude``) and
    state-dict names as ``torchtune.modules.peft.DoRALinear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_dim] -> [..., out_dim]."""
        out = linear_nf4(input=x, weight=self.weight) if self._quantize_base else F.linear(x, self.weight)
        if not self.disabled:
            lora_out = self.lora_b(self.lora_a(self.dropout(x)))
            # The adapter's weight through the modules (not lora_b.weight @ lora_a.weight), so FSDP's hooks run.
            eye = torch.eye(self.lora_a.weight.shape[1], device=x.device, dtype=x.dtype)
            lora_weight = self.lora_b(self.lora_a(eye)).T
            # The norm is a constant for the gradient, as in the DoRA paper (section 4.3) and PEFT.
            norm = self._get_weight_norm(self.weight.to(x.dtype), lora_weight.detach()).detach()
            out = (self.magnitude / norm) * (out + self.scaling * lora_out)
        return out + self.bias if self.use_bias else out


def adapter_scaling(module: nn.Module) -> float:
    """The factor s of the adapter's update s * B @ A (alpha / rank)."""
    return module.scaling if isinstance(module, _TorchtuneDoRALinear) else module.alpha / module.rank


def is_adapted(module: nn.Module) -> bool:
    """Whether ``module`` is a LoRA or DoRA layer (ours or torchtune's)."""
    return isinstance(module, (LoRALinear, _TorchtuneDoRALinear))


def full_precision(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a plain float32 tensor (an NF4-quantized QLoRA base is dequantized)."""
    if isinstance(weight, NF4Tensor):
        return weight.get_original_weight().float()
    return weight.detach().float()


def merge_adapter_weight(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    magnitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plain weight an adapted layer computes with (its bias is unchanged, by PEFT's rule).

    Args:
        weight: base weight [out, in] (an NF4 tensor is dequantized).
        lora_a: [rank, in]; lora_b: [out, rank].
        scaling: s in W + s * B @ A.
        magnitude: DoRA's magnitude [out]; None for LoRA.

    Returns:
        float32 [out, in]: W + s B A, times m / ||W + s B A||_row for DoRA.
    """
    merged = full_precision(weight) + scaling * (lora_b.detach().float() @ lora_a.detach().float())
    if magnitude is not None:
        merged = merged * (magnitude.detach().float() / torch.linalg.norm(merged, dim=1)).unsqueeze(1)
    return merged


def initialize_dora_magnitudes(model: nn.Module) -> None:
    """Start every DoRA magnitude at the row norms of its (loaded) weight, so training starts from the base.

    torchtune leaves the magnitude empty until the weights it adapts are known; call this once they are
    loaded (works on FSDP2-sharded modules too).
    """
    for module in model.modules():
        if isinstance(module, _TorchtuneDoRALinear):
            module.initialize_dora_magnitude()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every LoRA/DoRA layer folded into its base weight (float32 there).

    The model is left untouched. Layers may have different ranks and scales, and a QLoRA base is
    dequantized first, so this works for every model ``lora_qwen2_5_vl`` builds.

    Returns:
        our names -> tensors, without ``lora_a``/``lora_b``/``magnitude`` entries.
    """
    state_dict = {
        key: value for key, value in model.state_dict().items() if not key.endswith(ADAPTER_PARAM_SUFFIXES)
    }
    for name, module in model.named_modules():
        if is_adapted(module):
            magnitude = module.magnitude if isinstance(module, _TorchtuneDoRALinear) else None
            state_dict[f"{name}.weight" if name else "weight"] = merge_adapter_weight(
                module.weight, module.lora_a.weight, module.lora_b.weight, adapter_scaling(module), magnitude
            )
    return state_dict
