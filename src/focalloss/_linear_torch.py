"""The engine of :func:`focalloss.linear_focal_loss`: the loss of ``F.linear(x, W, b)`` and its
gradients for ``x``, ``W`` and ``b`` without the ``(N, V)`` logits.

Math (per row ``i`` with logits ``z = x_i W^T + b``)
---------------------------------------------------
``y = c * tanh(z / c)`` with ``logit_softcap = c`` (else ``y = z``), ``lse = logsumexp(y)``,
``lp = y - lse``, ``p = exp(lp)``. With ``k_c = weight_c * alpha_c * eps / V`` (the smoothed
part of the target, ``eps = label_smoothing``) and ``h = (1 - eps) * weight_t * alpha_t`` (its
one-hot part)::

    loss_i = -sum_c k_c m_c lp_c - h m_t lp_t                       (focal; m = (1 - p)^gamma)
             + e1 * weight_t * (1 - P)^(gamma + 1)                  (Poly-1; P = sum_c q_c p_c)
             + lam * lse^2                                          (z-loss)

``P = (1 - eps) p_t + eps / V`` is the target distribution's probability of the row (issue 13's
``p_t``), so ``1 - P = (1 - eps)(1 - p_t) + eps (V - 1) / V`` is computed from ``1 - p_t =
-expm1(lp_t)`` without cancellation. Every term's derivative in ``y`` has the form
``p * A - B * onehot(t) - ng`` with per-row scalars (``focalloss._reference`` derives the focal
ones; the same bounded ``r = p log p / (1 - p)`` numerics are used here)::

    b_i  = h m_t (1 + gamma u_t),  u_t = p_t lp_t / (p_t - 1)       focal, one-hot part
         + e1 w_t (gamma + 1) (1 - P)^gamma (1 - eps) p_t           Poly-1 (dP/dy_j =
                                                         (1 - eps) p_t (1[j = t] - p_j))
    ng_c = k_c m_c (1 + gamma u_c),  S = sum_c ng_c                  focal, smoothed part
    zl_i = 2 lam lse                                                 z-loss
    dloss/dy = p (S + b + zl) - ng - b onehot(t)

and ``dloss/dz = dloss/dy * (1 - tanh^2(z / c))`` under the softcap. A ``GammaSchedule``
replaces ``gamma`` by a per-row tensor chosen from the detached ``P`` (``row_gamma``): every
formula above holds with it, ``gamma`` being a constant of each row. The target entry, for hard
targets, is written as ``zl p_t + b (p_t - 1)`` with ``p_t - 1 = expm1(lp_t)``: exact where
``p_t`` rounds to 1. Each row's gradient is scaled by its share of the reduction (0 for ignored
rows; ``1 / divisor`` for ``"mean"``; ``grad_output_i`` for ``"none"``).

Memory strategy
---------------
Rows are processed in chunks. A chunk's logits are computed by one matmul into a reused
buffer, turned into their gradient in place, and contracted at once::

    grad_input[rows] = G @ W,   grad_W += G^T @ x[rows],   grad_b += sum_rows G

For ``"mean"`` and ``"sum"`` this happens in the forward pass (three matmuls in all, as the
unfused ``F.linear`` + loss), and the forward keeps ``grad_input`` ``(N, D)`` and ``grad_W``
``(V, D)`` until backward, which only multiplies them by ``grad_output`` (in place; not at all
when it is exactly 1 on the CPU) and hands the buffers to autograd (no copy). For ``"none"``
the per-row ``grad_output`` is known only in backward, which recomputes the chunks (four
matmuls). The extra memory is the chunk buffers, ``O(rows * V)``, never ``O(N * V)``.

When even a few rows of logits exceed the budget (huge ``V``), the classes are processed in
blocks: an online logsumexp over blocks, then the blocks again for the gradient (four
matmuls; five with label smoothing, whose smoothed part needs ``S`` before any gradient), with
``O(rows * block)`` memory.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._torch.softmax import scheduled_gamma, select_gamma

# Bytes of chunk work per call (see ``plan``), by device type.
BUDGET_BYTES = {"cpu": 64 << 20, "cuda": 256 << 20}
# Below this many rows per chunk the matmuls lose efficiency: use class blocks instead.
MIN_ROWS = 32
# Smallest class block.
MIN_BLOCK = 256


class Spec(NamedTuple):
    """The scalar options of one call."""

    gamma: float
    eps: float  # label smoothing
    poly1: float
    softcap: float  # 0.0: none
    z_loss: float
    ignore_index: int
    has_ignore: bool
    # A GammaSchedule of at least two pieces (``gamma`` is then NaN); empty for a number.
    thresholds: tuple[float, ...] = ()
    values: tuple[float, ...] = ()

    @property
    def scheduled(self) -> bool:
        return len(self.thresholds) > 0

    @property
    def zero_free(self) -> bool:
        """No piece of the schedule is 0 (``(1 - p) ** gamma`` may use logarithms)."""
        return 0.0 not in self.values


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def bytes_per_logit(dtype: torch.dtype, spec: Spec, triton: bool) -> int:
    """Bytes of chunk buffers per (row, class): what ``plan`` divides the budget by."""
    elem = dtype.itemsize
    if triton:
        return elem  # the kernel works in place in the logits buffer
    comp = 8 if dtype == torch.float64 else 4
    work = comp * (5 if spec.eps != 0.0 else 1)  # smoothing: lp, p, m, ng, a logsumexp temp
    if spec.softcap != 0.0:
        work += comp  # the chain factor 1 - tanh^2
    if elem != comp:
        work += elem  # half logits, then the half gradient for the matmuls
    return work


def plan(
    rows_total: int,
    num_classes: int,
    dtype: torch.dtype,
    device_type: str,
    spec: Spec,
    chunk_size: int,
    triton: bool,
) -> tuple[int, int]:
    """``(rows, block)``: rows per chunk and classes per block (``block == V``: no blocks).

    ``chunk_size > 0`` is the caller's row count (no class blocks). Otherwise, with ``B`` the
    budget (64 MiB on the CPU, 256 MiB on CUDA) and ``b = bytes_per_logit``:
    ``rows = B // (V * b)``, capped at ``N`` and evened out over ``ceil(N / rows)`` chunks; if
    that is below ``min(N, 32)`` rows (``V * b > B / 32``), the PyTorch backend keeps
    ``min(N, 32)`` rows and splits the classes into blocks of ``B // (rows * b)`` (at least
    256), the Triton backend keeps whole rows.
    """
    n = max(rows_total, 1)
    if chunk_size > 0:
        return min(chunk_size, n), num_classes
    budget = BUDGET_BYTES.get(device_type, BUDGET_BYTES["cpu"])
    per_row = max(num_classes, 1) * bytes_per_logit(dtype, spec, triton)
    fit = budget // per_row
    if fit >= min(n, MIN_ROWS) or triton:
        rows = max(1, min(fit, n))
        chunks = -(-n // rows)
        return -(-n // chunks), num_classes
    rows = min(n, MIN_ROWS)
    block = max(MIN_BLOCK, budget // (rows * bytes_per_logit(dtype, spec, triton)))
    return rows, min(block, num_classes)


# --------------------------------------------------------------------------------------------
# Per-row terms
# --------------------------------------------------------------------------------------------


class RowTerms(NamedTuple):
    loss: Tensor  # (n,) hard focal + Poly-1 + z-loss, 0 at ignored rows
    b: Tensor  # (n,) coefficient of -onehot(t), already scaled
    zl: Tensor  # (n,) z-loss coefficient 2 lam lse, already scaled
    p_t: Tensor  # (n,)
    q_t: Tensor  # (n,) p_t - 1
    gamma: float | Tensor  # spec.gamma, or (n,) per row from a schedule


def row_gamma(p_t: Tensor, spec: Spec, num_classes: int) -> float | Tensor:
    """``spec.gamma``, or the schedule's gamma of each row at the detached
    ``P = (1 - eps) p_t + eps / V`` (``p_t`` without smoothing), as ``focal_loss`` selects it."""
    if not spec.scheduled:
        return spec.gamma
    big_p = p_t if spec.eps == 0.0 else p_t * (1.0 - spec.eps) + spec.eps / num_classes
    return select_gamma(big_p.detach(), spec.thresholds, spec.values)


def row_terms(
    lp_t: Tensor,
    lse: Tensor,
    valid: Tensor | None,
    coef_t: Tensor | None,
    w_t: Tensor | None,
    row_scale: Tensor | None,
    spec: Spec,
    num_classes: int,
) -> RowTerms:
    """The per-row scalars of the module docstring, from ``lp_t`` and ``lse``.

    ``row_scale``: each row's gradient factor (None for 1); ignored rows get 0 here. With a
    schedule, ``gamma`` is a per-row tensor (``row_gamma``) in every formula: ``n`` values, so
    it costs a few per-row operations, nothing per logit.
    """
    eps = spec.eps
    q_t = torch.expm1(lp_t)  # p_t - 1, exact near p_t = 1
    p_t = torch.exp(lp_t)
    gamma = row_gamma(p_t, spec, num_classes)
    scheduled = isinstance(gamma, Tensor)
    hard_k = None if eps == 1.0 else (1.0 - eps) * (coef_t if coef_t is not None else 1.0)
    loss = torch.zeros_like(lp_t)
    b = torch.zeros_like(lp_t)
    if hard_k is not None:
        if not scheduled and gamma == 0.0:
            nl, s = lp_t, None
        else:
            # pow with a tensor exponent: 0 ** 0 = 1 for a piece of gamma 0.
            m = q_t.neg().pow(gamma) if scheduled or gamma != 2.0 else q_t.square()
            nl = m * lp_t
            # u = p lp / (p - 1) in [0, 1]; 0/0 (p = 1, where m = 0) and 0 * inf (p = 0) -> 0.
            u = torch.nan_to_num(p_t * lp_t / q_t, nan=0.0)
            s = m * (1.0 + gamma * u)
        loss = loss - nl * hard_k
        b = b + (s if s is not None else 1.0) * hard_k
    if spec.poly1 != 0.0:
        one_minus = (
            q_t.neg()
            if eps == 0.0
            else q_t.neg() * (1.0 - eps) + (eps * (num_classes - 1) / num_classes)
        )
        mp = torch.ones_like(one_minus) if not scheduled and gamma == 0.0 else one_minus.pow(gamma)
        factor = spec.poly1 if w_t is None else spec.poly1 * w_t
        loss = loss + factor * mp * one_minus
        if eps != 1.0:
            b = b + factor * (gamma + 1.0) * (1.0 - eps) * mp * p_t
    zl = torch.zeros_like(lp_t)
    if spec.z_loss != 0.0:
        loss = loss + spec.z_loss * lse.square()
        zl = (2.0 * spec.z_loss) * lse
    scale = row_scale
    if valid is not None:
        loss = loss.masked_fill(~valid, 0.0)
        v = valid.to(lp_t.dtype)
        scale = v if scale is None else v * scale
    if scale is not None:
        b, zl = b * scale, zl * scale
    return RowTerms(loss, b, zl, p_t, q_t, gamma)


def dense_terms(
    y: Tensor,
    lse: Tensor,
    k: Tensor | float,
    gamma: float | Tensor,
    want_grad: bool,
    zero_free: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The smoothed part over one block of logits ``y`` (consumed: overwritten in place).

    Returns ``(loss_part, p, ng)``: ``-sum_c k_c m_c lp_c`` per row, and when ``want_grad``
    ``p`` and ``ng = k m (1 + gamma u)`` of the block (fresh buffers). ``gamma`` is a number or
    a per-row ``(n,)`` tensor (a schedule): then ``m = exp(gamma log(1 - p))`` in place, or
    ``pow`` with the tensor exponent when a piece is 0 (``zero_free`` False; ``0 ** 0 = 1``).
    """
    lp = y.sub_(lse.unsqueeze(1))
    scheduled = isinstance(gamma, Tensor)
    p = torch.exp(lp) if (want_grad or (not scheduled and gamma != 0.0)) else None
    ng = None
    if not scheduled and gamma == 0.0:
        loss = (lp * k).sum(1).neg_() if isinstance(k, Tensor) else lp.sum(1).mul_(-k)
        if want_grad:
            ng = k.expand_as(lp).clone() if isinstance(k, Tensor) else torch.full_like(lp, k)
        return loss, p, ng
    g = gamma.unsqueeze(1) if scheduled else gamma
    km = torch.expm1(lp)  # p - 1
    if want_grad:
        ng = torch.mul(p, lp).div_(km).nan_to_num_(nan=0.0).mul_(g).add_(1.0)  # 1 + g u
    km.neg_()
    if scheduled and zero_free:  # exp(g log(1 - p)): exactly 0 at 1 - p = 0 for g > 0
        km.log_().mul_(g).exp_()
    elif scheduled:  # pow with the tensor exponent, 0 ** 0 = 1 (a piece of gamma 0)
        km.pow_(g)
    elif gamma == 2.0:
        km.square_()
    elif gamma != 1.0:
        km.pow_(gamma)
    km.mul_(k)  # k * m
    if ng is not None:
        ng.mul_(km)
    loss = lp.mul_(km).sum(1).neg_()
    return loss, p, ng


# --------------------------------------------------------------------------------------------
# The chunk loop
# --------------------------------------------------------------------------------------------


class _Buffers:
    """Flat buffers reused by every chunk; ``view(name, n, v)`` is a contiguous ``(n, v)``
    prefix."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.flat: dict[str, Tensor] = {}
        self.sizes: dict[str, tuple[int, torch.dtype]] = {}

    def declare(self, name: str, numel: int, dtype: torch.dtype) -> None:
        self.sizes[name] = (numel, dtype)

    def view(self, name: str, n: int, v: int) -> Tensor:
        if name not in self.flat:
            numel, dtype = self.sizes[name]
            self.flat[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return self.flat[name][: n * v].view(n, v)


def linear_focal_chunks(
    input: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_coef: Tensor | None,
    target_weight: Tensor | None,
    grad_scale: Tensor | None,
    grad_rows: Tensor | None,
    spec: Spec,
    chunk_size: int,
    per_row: bool,
    need_input_grad: bool,
    need_classifier_grad: bool,
    need_bias_grad: bool,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The loss (per row, or summed and scaled by ``grad_scale``) and the requested gradients
    (empty tensors for the others). ``input`` ``(N, D)``, ``target`` ``(N,)`` int64 with
    ``ignore_index`` at ignored rows."""
    n_total, dim = input.shape
    num_classes = classifier.shape[0]
    dtype = input.dtype
    cdtype = compute_dtype(dtype)
    device = input.device
    need_grad = need_input_grad or need_classifier_grad or need_bias_grad
    rows, block = plan(n_total, num_classes, dtype, device.type, spec, chunk_size, use_triton)

    loss_rows = torch.empty(n_total, dtype=cdtype, device=device) if per_row else None
    total = torch.zeros((), dtype=cdtype, device=device)
    grad_input = (
        torch.empty(n_total, dim, dtype=dtype, device=device)
        if need_input_grad
        else input.new_empty(0)
    )
    grad_classifier = (
        torch.empty_like(classifier, memory_format=torch.contiguous_format)
        if need_classifier_grad
        else classifier.new_empty(0)
    )
    if need_classifier_grad and n_total == 0:
        grad_classifier.zero_()
    grad_bias_acc = (
        torch.zeros(num_classes, dtype=cdtype, device=device) if need_bias_grad else None
    )
    # The product of the mean scale and a per-row grad_output, per chunk.
    scale_all = grad_scale
    if grad_rows is not None:
        scale_all = grad_rows.to(cdtype) if scale_all is None else grad_rows.to(cdtype) * scale_all

    bufs = _Buffers(device)
    bufs.declare("z", rows * block, dtype)
    if cdtype != dtype and not use_triton:
        bufs.declare("a", rows * block, cdtype)
    if spec.softcap != 0.0 and not use_triton:
        bufs.declare("d", rows * block, cdtype)
    blocked = block < num_classes
    grads = _Grads(classifier, bias, grad_input, grad_classifier, grad_bias_acc, bufs)

    for r0 in range(0, n_total, rows):
        r1 = min(r0 + rows, n_total)
        chunk = _Chunk(grads, input, r0, r1)
        t_c = target[r0:r1]
        if spec.has_ignore:
            valid = t_c != spec.ignore_index
            idx = t_c.masked_fill(~valid, 0)
        else:
            valid, idx = None, t_c
        coef_t = None if class_coef is None else class_coef[idx]
        w_t = None if target_weight is None else target_weight[idx]
        row_scale = None
        if scale_all is not None:
            row_scale = scale_all[r0:r1] if scale_all.dim() else scale_all

        if use_triton:
            from ._triton.linear import linear_focal_rows_

            z = chunk.logits(0, num_classes)
            part = linear_focal_rows_(z, t_c, class_coef, target_weight, row_scale, spec, need_grad)
            if need_grad:
                chunk.emit(z, 0, num_classes)
        elif not blocked:
            part = _full_chunk(
                chunk, idx, valid, coef_t, w_t, class_coef, row_scale, spec, cdtype, need_grad
            )
        else:
            part = _blocked_chunk(
                chunk, block, idx, valid, coef_t, w_t, class_coef, row_scale, spec, cdtype,
                need_grad,
            )  # fmt: skip
        if loss_rows is not None:
            loss_rows[r0:r1] = part
        else:
            total += part.sum()

    if per_row:
        assert loss_rows is not None
        loss = loss_rows
    else:
        loss = total if grad_scale is None else total * grad_scale
    grad_bias = (
        grad_bias_acc.to(bias.dtype)
        if grad_bias_acc is not None and bias is not None
        else input.new_empty(0)
    )
    return loss, grad_input, grad_classifier, grad_bias


class _Grads(NamedTuple):
    """The gradient buffers of one call and the tensors the matmuls read."""

    classifier: Tensor
    bias: Tensor | None
    input_grad: Tensor  # (N, D) or empty
    classifier_grad: Tensor  # (V, D) or empty
    bias_acc: Tensor | None  # (V,) in the compute dtype, or None
    bufs: _Buffers


class _Chunk:
    """Rows ``r0:r1``: their logits (per class block) and the contraction of their gradient."""

    def __init__(self, grads: _Grads, input: Tensor, r0: int, r1: int) -> None:
        self.grads, self.r0, self.r1, self.n = grads, r0, r1, r1 - r0
        self.x = input[r0:r1]
        self.bufs = grads.bufs

    def logits(self, v0: int, v1: int) -> Tensor:
        """``x W[v0:v1]^T + b[v0:v1]`` into the reused logits buffer (the input's dtype)."""
        z = self.bufs.view("z", self.n, v1 - v0)
        w_blk = self.grads.classifier[v0:v1].t()
        if self.grads.bias is None:
            torch.mm(self.x, w_blk, out=z)
        else:
            torch.addmm(self.grads.bias[v0:v1], self.x, w_blk, out=z)
        return z

    def emit(self, g: Tensor, v0: int, v1: int) -> None:
        """Fold the gradient ``g`` of the logits block ``v0:v1`` (any dtype; it may be the
        logits buffer itself) into the bias, input and classifier gradients."""
        grads = self.grads
        if grads.bias_acc is not None:
            grads.bias_acc[v0:v1] += g.sum(0, dtype=grads.bias_acc.dtype)
        z = self.bufs.view("z", self.n, v1 - v0)
        if g.dtype != z.dtype:
            g = z.copy_(g)  # the logits buffer is free again: the half gradient goes there
        if grads.input_grad.numel():
            out = grads.input_grad[self.r0 : self.r1]
            if v0 == 0:
                torch.mm(g, grads.classifier[v0:v1], out=out)
            else:
                out.addmm_(g, grads.classifier[v0:v1])
        if grads.classifier_grad.numel():
            out = grads.classifier_grad[v0:v1]
            if self.r0 == 0:
                torch.mm(g.t(), self.x, out=out)
            else:
                out.addmm_(g.t(), self.x)


def _softcap_(y: Tensor, d: Tensor | None, cap: float) -> None:
    """``y <- cap * tanh(y / cap)`` in place; ``d <- 1 - tanh^2 = 1 / cosh^2`` (exact for
    large arguments, where ``1 - tanh^2`` would cancel)."""
    y.div_(cap)
    if d is not None:
        torch.cosh(y, out=d)
        d.square_().reciprocal_()
    y.tanh_().mul_(cap)


def _work(z: Tensor, bufs: _Buffers, n: int, v: int, cdtype: torch.dtype) -> Tensor:
    """The logits block in the compute dtype (the same buffer when the dtypes agree)."""
    if z.dtype == cdtype:
        return z
    return bufs.view("a", n, v).copy_(z)


def _full_chunk(
    chunk: _Chunk,
    idx: Tensor,
    valid: Tensor | None,
    coef_t: Tensor | None,
    w_t: Tensor | None,
    class_coef: Tensor | None,
    row_scale: Tensor | None,
    spec: Spec,
    cdtype: torch.dtype,
    need_grad: bool,
) -> Tensor:
    """One chunk with all classes in one buffer; returns the per-row loss."""
    num_classes = chunk.grads.classifier.shape[0]
    n, bufs = chunk.n, chunk.bufs
    y = _work(chunk.logits(0, num_classes), bufs, n, num_classes, cdtype)
    d = None
    if spec.softcap != 0.0:
        d = bufs.view("d", n, num_classes) if need_grad else None
        _softcap_(y, d, spec.softcap)
    index = idx.unsqueeze(1)
    y_t = y.gather(1, index).squeeze(1)
    if spec.eps == 0.0:
        # Hard targets: y -> exp(y - max) in place; p = that / sum; lse = max + log(sum).
        mx = y.amax(1, keepdim=True)
        e = y.sub_(mx).exp_()
        s = e.sum(1)
        lse = mx.squeeze(1) + s.log()
        terms = row_terms(y_t - lse, lse, valid, coef_t, w_t, row_scale, spec, num_classes)
        if need_grad:
            g = e.mul_(((terms.b + terms.zl) / s).unsqueeze(1))  # (b + zl) p
            g.scatter_(1, index, (terms.zl * terms.p_t + terms.b * terms.q_t).unsqueeze(1))
            if d is not None:
                g.mul_(d)
            chunk.emit(g, 0, num_classes)
        return terms.loss
    lse = torch.logsumexp(y, 1)
    terms = row_terms(y_t - lse, lse, valid, coef_t, w_t, row_scale, spec, num_classes)
    k = _dense_k(class_coef, spec.eps, num_classes, 0, num_classes)
    dense_loss, p, ng = dense_terms(y, lse, k, terms.gamma, need_grad, spec.zero_free)
    loss = terms.loss + (dense_loss if valid is None else dense_loss.masked_fill(~valid, 0.0))
    if need_grad:
        assert p is not None and ng is not None
        _dense_grad_(p, ng, terms, valid, row_scale, index, terms.b, d)
        chunk.emit(p, 0, num_classes)
    return loss


def _dense_k(
    class_coef: Tensor | None, eps: float, num_classes: int, v0: int, v1: int
) -> Tensor | float:
    if class_coef is None:
        return eps / num_classes
    return class_coef[v0:v1] * (eps / num_classes)


def _dense_grad_(
    p: Tensor,
    ng: Tensor,
    terms: RowTerms,
    valid: Tensor | None,
    row_scale: Tensor | None,
    index: Tensor,
    b_at_index: Tensor,
    d: Tensor | None,
    total: Tensor | None = None,
) -> None:
    """``p <- p (S + b + zl) - ng - b onehot`` (each row scaled; ``b_at_index`` is what is
    subtracted at ``index``), times the chain factor ``d``. ``total``: ``S`` when known (class
    blocks); else ``ng.sum(1)`` of this block, which then holds every class."""
    scale = row_scale
    if valid is not None:
        v = valid.to(p.dtype)
        scale = v if scale is None else v * scale
    s = ng.sum(1) if total is None else total
    if scale is not None:
        s = s * scale
        ng.mul_(scale.unsqueeze(1) if scale.dim() else scale)
    p.mul_((s + terms.b + terms.zl).unsqueeze(1)).sub_(ng)
    p.scatter_add_(1, index, b_at_index.neg().unsqueeze(1))
    if d is not None:
        p.mul_(d)


def _blocked_chunk(
    chunk: _Chunk,
    block: int,
    idx: Tensor,
    valid: Tensor | None,
    coef_t: Tensor | None,
    w_t: Tensor | None,
    class_coef: Tensor | None,
    row_scale: Tensor | None,
    spec: Spec,
    cdtype: torch.dtype,
    need_grad: bool,
) -> Tensor:
    """One chunk with the classes in blocks: the logits of each block are recomputed by its
    matmul in every pass (online logsumexp; smoothed sums; gradient)."""
    num_classes = chunk.grads.classifier.shape[0]
    n, bufs = chunk.n, chunk.bufs
    blocks = [(v0, min(v0 + block, num_classes)) for v0 in range(0, num_classes, block)]

    def block_y(v0: int, v1: int, with_d: bool) -> tuple[Tensor, Tensor | None]:
        y = _work(chunk.logits(v0, v1), bufs, n, v1 - v0, cdtype)
        d = None
        if spec.softcap != 0.0:
            d = bufs.view("d", n, v1 - v0) if with_d else None
            _softcap_(y, d, spec.softcap)
        return y, d

    mx = torch.full((n,), -math.inf, dtype=cdtype, device=idx.device)
    s = torch.zeros(n, dtype=cdtype, device=idx.device)
    y_t = torch.zeros(n, dtype=cdtype, device=idx.device)
    for v0, v1 in blocks:
        y, _ = block_y(v0, v1, False)
        inside = (idx >= v0) & (idx < v1)
        local = (idx - v0).clamp_(0, v1 - v0 - 1).unsqueeze(1)
        y_t = torch.where(inside, y.gather(1, local).squeeze(1), y_t)
        new = torch.maximum(mx, y.amax(1))
        s = s * torch.exp(mx - new) + y.sub_(new.unsqueeze(1)).exp_().sum(1)
        mx = new
    lse = mx + s.log()
    terms = row_terms(y_t - lse, lse, valid, coef_t, w_t, row_scale, spec, num_classes)
    loss = terms.loss
    total = None
    if spec.eps != 0.0:
        dense = torch.zeros(n, dtype=cdtype, device=idx.device)
        total = torch.zeros(n, dtype=cdtype, device=idx.device)
        for v0, v1 in blocks:
            y, _ = block_y(v0, v1, False)
            k = _dense_k(class_coef, spec.eps, num_classes, v0, v1)
            part, _, ng = dense_terms(y, lse, k, terms.gamma, need_grad, spec.zero_free)
            dense += part
            if ng is not None:
                total += ng.sum(1)
        loss = loss + (dense if valid is None else dense.masked_fill(~valid, 0.0))
    if not need_grad:
        return loss
    for v0, v1 in blocks:
        y, d = block_y(v0, v1, True)
        inside = (idx >= v0) & (idx < v1)
        local = (idx - v0).clamp(0, v1 - v0 - 1).unsqueeze(1)
        if spec.eps == 0.0:
            g = y.sub_(lse.unsqueeze(1)).exp_().mul_((terms.b + terms.zl).unsqueeze(1))
            entry = terms.zl * terms.p_t + terms.b * terms.q_t
            g.scatter_(1, local, torch.where(inside, entry, g.gather(1, local).squeeze(1))[:, None])
            if d is not None:
                g.mul_(d)
        else:
            k = _dense_k(class_coef, spec.eps, num_classes, v0, v1)
            _, g, ng = dense_terms(y, lse, k, terms.gamma, True, spec.zero_free)
            assert g is not None and ng is not None
            # S and b multiply p in every block; -b onehot only in the block of the target.
            b_here = torch.where(inside, terms.b, 0.0)
            _dense_grad_(g, ng, terms, valid, row_scale, local, b_here, d, total)
        chunk.emit(g, v0, v1)
    return loss


# --------------------------------------------------------------------------------------------
# Differentiable composite (double backward, torch.func)
# --------------------------------------------------------------------------------------------


def _modulator(u: Tensor, power: float | Tensor) -> Tensor:
    """``u ** power`` with a finite derivative where ``u = 0`` (the "double where"); ``power``
    is a number ``> 0`` or a detached tensor ``>= 0`` (``0 ** 0 = 1``)."""
    positive = u > 0
    base = torch.where(positive, u, torch.ones_like(u))
    at_zero = (power == 0).to(u.dtype) if isinstance(power, Tensor) else torch.zeros_like(u)
    return torch.where(positive, base.pow(power), at_zero)


def linear_focal_composite(
    input: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_coef: Tensor | None,
    target_weight: Tensor | None,
    grad_scale: Tensor | None,
    spec: Spec,
    per_row: bool,
) -> Tensor:
    """The same loss from differentiable operations, through the full ``(N, V)`` logits (for
    ``create_graph=True`` and ``torch.func``; never on the training path)."""
    cdtype = compute_dtype(input.dtype)
    z = F.linear(input, classifier, bias).to(cdtype)
    num_classes = z.shape[1]
    if spec.has_ignore:
        valid = target != spec.ignore_index
        idx = torch.where(valid, target, torch.zeros_like(target))
    else:
        valid, idx = None, target
    y = z if spec.softcap == 0.0 else spec.softcap * torch.tanh(z / spec.softcap)
    lse = torch.logsumexp(y, 1)
    lp = y - lse.unsqueeze(1)
    onehot = (idx.unsqueeze(1) == torch.arange(num_classes, device=z.device)).to(cdtype)
    q = onehot * (1.0 - spec.eps) + spec.eps / num_classes
    k = q if class_coef is None else q * class_coef
    lp_used = torch.where(k != 0, lp, 0.0)
    one_minus_p = -torch.expm1(lp)
    gamma: float | Tensor = spec.gamma
    if spec.scheduled:  # a constant of each row, from the detached P = sum_c q_c p_c
        big_p = (q * lp.exp()).sum(1).detach()
        gamma = scheduled_gamma(big_p, spec.thresholds, spec.values)
        terms = k * _modulator(one_minus_p, gamma.unsqueeze(1)) * lp_used
    elif spec.gamma == 0.0:
        terms = k * lp_used
    else:
        terms = k * _modulator(one_minus_p, spec.gamma) * lp_used
    loss = -terms.sum(1)
    if spec.poly1 != 0.0:
        lp_t = lp.gather(1, idx.unsqueeze(1)).squeeze(1)
        one_minus = -torch.expm1(lp_t) * (1.0 - spec.eps) + (
            spec.eps * (num_classes - 1) / num_classes
        )
        poly = _modulator(one_minus, gamma + 1.0)
        w = spec.poly1 if target_weight is None else spec.poly1 * target_weight[idx]
        loss = loss + w * poly
    if spec.z_loss != 0.0:
        loss = loss + spec.z_loss * lse.square()
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    if per_row:
        return loss
    total = loss.sum()
    return total if grad_scale is None else total * grad_scale


# --------------------------------------------------------------------------------------------
# Custom operator and autograd
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("focalloss::linear_focal", mutates_args=())
def linear_focal_op(
    input: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_coef: Tensor | None,
    target_weight: Tensor | None,
    grad_scale: Tensor | None,
    grad_rows: Tensor | None,
    gamma: float,
    label_smoothing: float,
    poly1_epsilon: float,
    logit_softcap: float,
    z_loss: float,
    ignore_index: int,
    has_ignore: bool,
    chunk_size: int,
    per_row: bool,
    need_input_grad: bool,
    need_classifier_grad: bool,
    need_bias_grad: bool,
    use_triton: bool,
    gamma_thresholds: list[float],
    gamma_values: list[float],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, grad_input, grad_classifier, grad_bias)`` (see ``linear_focal_chunks``); an
    opaque node with a fake implementation for ``torch.compile``."""
    spec = Spec(gamma, label_smoothing, poly1_epsilon, logit_softcap, z_loss, ignore_index,
                has_ignore, tuple(gamma_thresholds), tuple(gamma_values))  # fmt: skip
    return linear_focal_chunks(
        input, classifier, bias, target, class_coef, target_weight, grad_scale, grad_rows,
        spec, chunk_size, per_row, need_input_grad, need_classifier_grad, need_bias_grad,
        use_triton,
    )  # fmt: skip


@linear_focal_op.register_fake
def _(input, classifier, bias, target, class_coef, target_weight, grad_scale, grad_rows, gamma,
      label_smoothing, poly1_epsilon, logit_softcap, z_loss, ignore_index, has_ignore,
      chunk_size, per_row, need_input_grad, need_classifier_grad, need_bias_grad,
      use_triton, gamma_thresholds, gamma_values):  # fmt: skip
    cdtype = compute_dtype(input.dtype)
    loss = input.new_empty(input.shape[:1] if per_row else (), dtype=cdtype)
    gi = torch.empty_like(input) if need_input_grad else input.new_empty(0)
    gw = (
        torch.empty_like(classifier, memory_format=torch.contiguous_format)
        if need_classifier_grad
        else classifier.new_empty(0)
    )
    gb = torch.empty_like(bias) if need_bias_grad and bias is not None else input.new_empty(0)
    return loss, gi, gw, gb


class Call(NamedTuple):
    """Everything of one call except the differentiable tensors."""

    target: Tensor
    class_coef: Tensor | None
    target_weight: Tensor | None
    grad_scale: Tensor | None
    spec: Spec
    chunk_size: int
    per_row: bool
    use_triton: bool

    def run(
        self,
        input: Tensor,
        classifier: Tensor,
        bias: Tensor | None,
        needs: tuple[bool, bool, bool],
        grad_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = self.spec
        return torch.ops.focalloss.linear_focal(
            input, classifier, bias, self.target, self.class_coef, self.target_weight,
            self.grad_scale, grad_rows, s.gamma, s.eps, s.poly1, s.softcap, s.z_loss,
            s.ignore_index, s.has_ignore, self.chunk_size,
            self.per_row and grad_rows is None, *needs, self.use_triton,
            list(s.thresholds), list(s.values),
        )  # fmt: skip

    def composite(self, input: Tensor, classifier: Tensor, bias: Tensor | None) -> Tensor:
        return linear_focal_composite(
            input, classifier, bias, self.target, self.class_coef, self.target_weight,
            self.grad_scale, self.spec, self.per_row,
        )  # fmt: skip


class LinearFocalFunction(torch.autograd.Function):
    """Forward computes the loss and, for ``"mean"``/``"sum"``, the gradients (chunk by
    chunk); backward scales them by ``grad_output``. For ``"none"`` backward recomputes the
    chunks with the per-row ``grad_output``. Double backward differentiates the composite."""

    @staticmethod
    def forward(ctx, call: Call, input: Tensor, classifier: Tensor, bias: Tensor | None):  # type: ignore[override]
        needs = (
            bool(ctx.needs_input_grad[1]),
            bool(ctx.needs_input_grad[2]),
            bias is not None and bool(ctx.needs_input_grad[3]),
        )
        ctx.call, ctx.needs, ctx.has_bias = call, needs, bias is not None
        compiling = torch.compiler.is_compiling()
        ctx.compiling = compiling
        tensors = (input, classifier) + ((bias,) if bias is not None else ())
        if call.per_row:
            loss, *_ = call.run(input, classifier, bias, (False, False, False))
            ctx.save_for_backward(*tensors)
            return loss
        loss, gi, gw, gb = call.run(input, classifier, bias, needs)
        if compiling:
            ctx.save_for_backward(*tensors, gi, gw, gb)
        else:
            ctx.grads = (gi, gw, gb)
            ctx.save_for_backward(*tensors)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        call: Call = ctx.call
        saved = ctx.saved_tensors
        input, classifier = saved[0], saved[1]
        bias = saved[2] if ctx.has_bias else None
        n_inputs = 3 if ctx.has_bias else 2
        if torch.is_grad_enabled():  # create_graph=True: a graph of the gradient is needed
            ctx.grads = None
            with torch.enable_grad():
                tensors = (input, classifier, bias)
                wanted = [t for t, need in zip(tensors, ctx.needs, strict=True) if need]
                loss = call.composite(input, classifier, bias)
                got = iter(torch.autograd.grad(loss, wanted, grad_output, create_graph=True))
            grads = [next(got) if need else None for need in ctx.needs]
            return (None, *grads)
        if call.per_row:
            _, gi, gw, gb = call.run(input, classifier, bias, ctx.needs, grad_rows=grad_output)
            return _finish(ctx, gi, gw, gb)
        if ctx.compiling:
            gi, gw, gb = saved[n_inputs:]
            go = grad_output
            return _finish(ctx, *(g * go.to(g.dtype) if g.numel() else g for g in (gi, gw, gb)))
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # retain_graph: a second backward through this node recomputes
            _, *grads = call.run(input, classifier, bias, ctx.needs)
        skip = grad_output.device.type == "cpu" and grad_output.item() == 1.0
        if not skip:
            for g in grads:
                if g.numel():
                    g.mul_(grad_output.to(g.dtype))
        return _finish(ctx, *grads)


def _finish(ctx, gi: Tensor, gw: Tensor, gb: Tensor) -> tuple:
    need_i, need_w, need_b = ctx.needs
    return (
        None,
        gi if need_i else None,
        gw if need_w else None,
        (gb if need_b else None) if ctx.has_bias else None,
    )
