"""Built-in norm kinds: their descriptors, and classifying PyTorch's norm classes and look-alikes.

:data:`BUILTIN_KINDS` is the one list of the built-in kinds (their labels, how their
normalization groups are formed, how they are drawn), registered through
``normviz_register_norm_kinds`` exactly as a plugin registers its own.

PyTorch's own classes are recognised by type. Classes a model defines itself (an
RMSNorm written by hand, ConvNeXt's channels-first LayerNorm, a "LayerNorm" that
really computes an RMS norm) are recognised by *behaviour*: a copy of the module is
run on a probe input to see over which dims it is scale-invariant (what makes it a
normalizer) and whether it is also shift-invariant (centering: layer norm) or not
(RMS norm). The probe uses its own random generator and a deep copy, so the
model and the global RNG are untouched.

Importing this module imports no torch (a plotting process registers it too): the
functions import it when called, with a torch module in hand, so torch is loaded already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from normviz.datatypes import NormKind, NormSpec, Register
from normviz.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The built-in kinds, in the order figures list them; ``none`` (the baseline without
#: normalization) comes last. Colours: Okabe & Ito's colour-blind-safe palette, the
#: darkest, most saturated for the kinds compared most often, black for the baseline; each
#: kind also has its own line style and marker, so curves stay apart in grayscale.
BUILTIN_KINDS: tuple[NormKind, ...] = (
    NormKind("batch", "BatchNorm", "one channel over N and the spatial dims", per_channel=True,
             color="#0072B2", linestyle="-", marker="o"),  # Okabe-Ito blue
    NormKind("layer", "LayerNorm", "one sample/token over its normalized dims",
             color="#D55E00", linestyle="--", marker="s"),  # vermillion
    NormKind("instance", "InstanceNorm", "one (sample, channel) over the spatial dims", per_channel=True,
             color="#009E73", linestyle="-.", marker="^"),  # bluish green
    NormKind("group", "GroupNorm", "one (sample, group of C/G channels) over those channels and the spatial dims",
             color="#CC79A7", linestyle=":", marker="D"),  # reddish purple
    NormKind("rms", "RMSNorm", "one sample/token, RMS only (no mean subtracted)",
             color="#E69F00", linestyle=(0, (3, 1, 1, 1, 1, 1)), marker="v"),  # orange; dash-dot-dot
    NormKind("none", "no norm", "no groups: nothing is normalized (the baseline)",
             color="#000000", linestyle=(0, (8, 3)), marker="x"),  # black; long dashes, unlike "--"
)

#: The built-in kinds' names, in order.
KINDS: tuple[str, ...] = tuple(kind.name for kind in BUILTIN_KINDS)


@hookimpl
def normviz_register_norm_kinds(register: Register[NormKind]) -> None:
    """Register the built-in kinds."""
    for kind in BUILTIN_KINDS:
        register(kind)


@hookimpl(trylast=True)
def normviz_classify_module(name: str, module: nn.Module) -> NormSpec | None:
    """Classify PyTorch's norm classes, then probe unknown classes named like norms."""
    from torch import nn

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return NormSpec("batch", channel_dim=1, group_dims="batch")
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return NormSpec("instance", channel_dim=1, group_dims="sample-channel")
    if isinstance(module, nn.GroupNorm):
        return NormSpec("group", channel_dim=1, group_dims="group", num_groups=module.num_groups)
    if isinstance(module, nn.LayerNorm):
        return NormSpec("layer", channel_dim=-1, group_dims="trailing", normalized_ndim=len(module.normalized_shape))
    rms_cls = getattr(nn, "RMSNorm", None)
    if rms_cls is not None and isinstance(module, rms_cls):
        return NormSpec(
            "rms", channel_dim=-1, group_dims="trailing", normalized_ndim=len(module.normalized_shape), centered=False
        )
    if "norm" in type(module).__name__.lower() and not _has_children(module):
        return probe_norm(module)
    return None


def _has_children(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def _channels(module: nn.Module) -> int | None:
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if tensor.dim() >= 1 and tensor.numel() > 1:
            return int(tensor.shape[0])
    for attr in ("normalized_shape", "num_features", "dim", "hidden_size", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
            return value[0]
    return None


def probe_norm(module: nn.Module) -> NormSpec | None:
    """Find out how an unknown module normalizes by running a copy of it.

    Returns a ``layer`` or ``rms`` spec, channels-last or channels-first, or None when
    the module does not behave like a per-row normalizer.
    """
    import copy

    import torch

    channels = _channels(module)
    if channels is None or channels < 2:
        return None
    try:
        probe = copy.deepcopy(module).float().cpu().eval()
    except Exception:  # noqa: BLE001 - an uncopyable module is simply not probed
        return None
    # The copy carries the user's hooks: running them on probe data would have side effects.
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        getattr(probe, hooks, {}).clear()
    gen = torch.Generator().manual_seed(0)
    layouts = (("last", (3, 2, channels)), ("first", (3, channels, 2, 2)))
    for layout, shape in layouts:
        x = torch.randn(shape, generator=gen) * 2 + 3
        if layout == "last":
            scale = torch.rand(shape[:-1] + (1,), generator=gen) * 3 + 0.5
            shift = torch.randn(shape[:-1] + (1,), generator=gen) * 4
        else:
            scale = torch.rand((shape[0], 1) + shape[2:], generator=gen) * 3 + 0.5
            shift = torch.randn((shape[0], 1) + shape[2:], generator=gen) * 4
        try:
            with torch.no_grad():
                y = probe(x)
                y_scaled = probe(x * scale)
                y_shifted = probe(x + shift)
        except Exception:  # noqa: BLE001 - wrong layout for this module: try the next
            continue
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            continue
        if not _close(y, y_scaled):
            continue
        centered = _close(y, y_shifted)
        kind = "layer" if centered else "rms"
        if layout == "last":
            return NormSpec(kind, channel_dim=-1, group_dims="trailing", normalized_ndim=1, centered=centered)
        return NormSpec(kind, channel_dim=1, group_dims="channel", centered=centered)
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-3))
