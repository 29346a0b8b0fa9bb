"""Dead attention heads: remove a head of a fused-qkv attention block whose output nothing reads.

The channel graph keeps a Linear whose output is split into heads (``qkv(x).reshape(B, N, 3, H, hd)``) whole:
removing single channels would break the split. A whole head can go, though, when its output is never read:
the output projection's columns for it are all zero, or its value rows (the last of the fused groups) and
their biases are all zero, so it emits zeros. Then its query, key and value rows leave the qkv Linear, its
columns leave the projection, the split's head count becomes the number left and the merge back to
``(B, N, H * hd)`` reads ``-1``.

Heads are independent only if nothing between the split and the merge mixes them (a softmax over the head
axis, talking heads). That is not assumed: every removal is run against the reference model and undone,
with a note, if the outputs move. Heads whose queries or keys are dead are not removable: their attention is
uniform, not zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .._verify import compare_outputs

__all__ = ["remove_dead_heads"]

_SEARCH = 24  # nodes between the split and the merge worth looking through
_RESHAPES = ("reshape", "view")


@dataclass
class _Site:
    qkv: fx.Node  # the fused Linear
    split: fx.Node  # reshape (..., G * H * hd) -> (..., G, H, hd)
    merge: fx.Node  # reshape (..., H, hd) -> (..., H * hd)
    proj: fx.Node  # the Linear reading the merge
    groups: int
    heads: int
    head_dim: int
    heads_at: int  # index of the head count among the split's size arguments


def remove_dead_heads(gm: fx.GraphModule, reference: nn.Module, x: torch.Tensor, tolerance: float) -> list[str]:
    """Remove dead heads of every fused-qkv attention block of ``gm`` (in place); one note per block touched.

    Each block's removal is kept only if ``gm`` still matches ``reference`` on ``x`` within
    ``tolerance × max(1, max|reference|)``.
    """
    notes: list[str] = []
    for node in list(gm.graph.nodes):
        site = _site(gm, node)
        if site is None:
            continue
        proj = gm.get_submodule(str(site.proj.target))
        qkv = gm.get_submodule(str(site.qkv.target))
        unread = _unread_heads(proj, site)
        zero_value = _zero_value_heads(qkv, site)
        where = f"'{site.qkv.target}' / '{site.proj.target}'"
        for dead in (sorted(set(unread) | set(zero_value)), unread):
            dead = dead[: site.heads - 1]  # keep one head: a 0-sized dim breaks ONNX export
            if not dead:
                break
            if _try(gm, site, dead, reference, x, tolerance):
                notes.append(
                    f"{where}: removed {len(dead)} of {site.heads} attention heads ({', '.join(map(str, dead))}): "
                    "their output is never read"
                )
                break
        else:
            notes.append(f"{where}: kept dead attention heads: removing them changed the outputs (heads are mixed)")
    return notes


def _site(gm: fx.GraphModule, split: fx.Node) -> _Site | None:
    """The attention block whose head split is ``split``, or None if ``split`` is not one."""
    if not _is_reshape(split) or not isinstance(src := split.args[0], fx.Node):
        return None
    qkv_mod = gm.get_submodule(str(src.target)) if src.op == "call_module" else None
    in_shape, out_shape = _shape(src), _shape(split)
    if not isinstance(qkv_mod, nn.Linear) or in_shape is None or out_shape is None:
        return None
    lead = len(in_shape) - 1
    if len(out_shape) != lead + 3 or out_shape[:lead] != in_shape[:lead]:
        return None
    groups, heads, head_dim = out_shape[lead:]
    sizes = _sizes(split)
    if heads < 2 or sizes is None or len(sizes) != len(out_shape) or math.prod(out_shape[lead:]) != in_shape[-1]:
        return None
    heads_at = len(out_shape) - 2
    if not (isinstance(sizes[heads_at], int) and sizes[heads_at] == heads):
        return None  # the head count is not a number we can change
    merge = _find_merge(split, heads, head_dim)
    if merge is None or len(merge.users) != 1:
        return None
    proj = next(iter(merge.users))
    proj_mod = gm.get_submodule(str(proj.target)) if proj.op == "call_module" else None
    if not isinstance(proj_mod, nn.Linear) or proj_mod.in_features != heads * head_dim or proj.args[0] is not merge:
        return None
    return _Site(src, split, merge, proj, groups, heads, head_dim, heads_at)


def _find_merge(split: fx.Node, heads: int, head_dim: int) -> fx.Node | None:
    seen: list[fx.Node] = []
    todo = list(split.users)
    while todo and len(seen) < _SEARCH:
        n = todo.pop(0)
        if n in seen:
            continue
        seen.append(n)
        src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        in_shape, out_shape = (_shape(src) if src is not None else None), _shape(n)
        if (
            _is_reshape(n)
            and in_shape is not None
            and out_shape is not None
            and in_shape[-2:] == (heads, head_dim)
            and out_shape == (*in_shape[:-2], heads * head_dim)
            and (sizes := _sizes(n)) is not None
            and len(sizes) == len(out_shape)
            and -1 not in sizes[:-1]
        ):
            return n
        todo.extend(n.users)
    return None


def _unread_heads(proj: nn.Module, site: _Site) -> list[int]:
    lin: nn.Linear = proj  # type: ignore[assignment]  # _site checked it
    w = lin.weight.detach().reshape(lin.out_features, site.heads, site.head_dim)
    return [h for h in range(site.heads) if not bool((w[:, h] != 0).any())]


def _zero_value_heads(qkv: nn.Module, site: _Site) -> list[int]:
    """Heads whose value rows (the last fused group) and biases are all zero: they emit zeros."""
    lin: nn.Linear = qkv  # type: ignore[assignment]  # _site checked it
    w = lin.weight.detach().reshape(site.groups, site.heads, site.head_dim, -1)
    b = (
        lin.bias.detach().reshape(site.groups, site.heads, site.head_dim)
        if lin.bias is not None
        else torch.zeros(site.groups, site.heads, site.head_dim)
    )
    v = site.groups - 1
    return [h for h in range(site.heads) if not bool((w[v, h] != 0).any() or (b[v, h] != 0).any())]


def _try(
    gm: fx.GraphModule, site: _Site, dead: list[int], reference: nn.Module, x: torch.Tensor, tolerance: float
) -> bool:
    """Remove ``dead`` heads; keep the change if the outputs still match, else undo it. True if kept."""
    keep = torch.tensor([h for h in range(site.heads) if h not in dead])
    qkv_old = gm.get_submodule(str(site.qkv.target))
    proj_old = gm.get_submodule(str(site.proj.target))
    split_args, merge_args = site.split.args, site.merge.args
    hd, heads = site.head_dim, site.heads
    dims = (keep[:, None] * hd + torch.arange(hd)).flatten()  # (H' * hd,) positions within one group
    rows = torch.cat([g * heads * hd + dims for g in range(site.groups)])
    _set(gm, str(site.qkv.target), _linear_rows(qkv_old, rows))
    _set(gm, str(site.proj.target), _linear_cols(proj_old, dims))
    site.split.args = _with_size(site.split, site.heads_at, len(keep))
    site.merge.args = _with_size(site.merge, len(_shape(site.merge) or ()) - 1, -1)
    gm.recompile()
    try:
        diff, scale = compare_outputs(reference, gm, x, "attention heads removed")
        ok = diff <= tolerance * scale
    except Exception:  # a shape that no longer fits: the heads were not independent
        ok = False
    if not ok:
        _set(gm, str(site.qkv.target), qkv_old)
        _set(gm, str(site.proj.target), proj_old)
        site.split.args, site.merge.args = split_args, merge_args
        gm.recompile()
    return ok


def _linear_rows(mod: nn.Module, rows: torch.Tensor) -> nn.Linear:
    lin: nn.Linear = mod  # type: ignore[assignment]  # _site checked it
    new = nn.Linear(
        lin.in_features, len(rows), bias=lin.bias is not None, device=lin.weight.device, dtype=lin.weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(lin.weight[rows])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[rows])
    return new


def _linear_cols(mod: nn.Module, cols: torch.Tensor) -> nn.Linear:
    lin: nn.Linear = mod  # type: ignore[assignment]  # _site checked it
    new = nn.Linear(
        len(cols), lin.out_features, bias=lin.bias is not None, device=lin.weight.device, dtype=lin.weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, cols])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def _set(gm: fx.GraphModule, target: str, new: nn.Module) -> None:
    parent, _, attr = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, new)


def _is_reshape(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target in _RESHAPES) or (n.op == "call_function" and n.target is torch.reshape)


def _sizes(n: fx.Node) -> tuple[Any, ...] | None:
    """The size arguments of a reshape/view node, flattened: ``x.view(a, b)`` and ``x.view((a, b))`` alike."""
    rest = tuple(n.args[1:])
    if n.kwargs:
        return None
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return tuple(rest[0])
    return rest


def _with_size(n: fx.Node, i: int, value: int) -> tuple[Any, ...]:
    sizes = list(_sizes(n) or ())
    sizes[i] = value
    packed = len(n.args) == 2 and isinstance(n.args[1], (tuple, list))
    return (n.args[0], tuple(sizes)) if packed else (n.args[0], *sizes)


def _shape(n: fx.Node) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if isinstance(shape, torch.Size) else None
