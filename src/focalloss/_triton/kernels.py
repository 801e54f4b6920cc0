"""Triton kernels of the focal losses: loss and input gradient in one launch.

Every kernel sees its tensors through an ``(N, C, S)`` frame: ``n`` the batch, ``c`` the class,
``s`` the flattened spatial position, each with its own element stride (``(N, C, H, W)``
contiguous has strides ``(C*H*W, H*W, 1)``; channels_last ``(C*H*W, 1, C)``; ``(N, C)`` is
framed as ``(1, C, N)``). So the logits are read in their own layout, never permuted or copied.
Offsets are computed in int64 (sizes may exceed 2**31 elements).

The math is the one of ``focalloss._reference`` (see its docstrings for the derivations):

softmax, per position with ``lp = x - logsumexp(x)``, ``q_t = p_t - 1 = expm1(lp_t)``,
``m = (1 - p)**gamma``, ``u = p * lp / (p - 1)`` (``= -r`` in [0, 1]):

    loss = -(sum over classes of k_c * m_c * lp_c)
    ng_c = k_c * m_c * (1 + gamma * u_c)        (k_c * m_c when the modulator is detached)
    grad_c = scale * (p_c * sum_c' ng_c' - ng_c)

with ``k = (1 - eps) * coef_t * onehot(t) + (eps / C) * coef``. The target class's entry is
written with ``q_t`` (no ``p_t - 1`` cancellation).

sigmoid, per element with ``t`` in [0, 1] (for class indices ``t = [c == target]``):

    ce = pw * t * softplus(-x) + (1 - t) * softplus(x),   u = t * (1 - p) + (1 - t) * p
    loss = w * a_t * u**gamma * ce
    grad = scale * w * a_t * u**gamma * ((1 - t) p - pw t (1 - p) + gamma * rho * (1 - 2t) * ce)

with ``rho = p (1 - p) / u`` in [0, 1] (0 where u = 0).

Poly-1 (``POLY``, coefficient ``e`` in the parameters): softmax adds per position
``e * w_t * U ** (gamma + 1)`` with ``U = (1 - eps) (1 - p_t) + eps (C - 1) / C``, whose
gradient is one more share of the target's scalar, ``A (1 - eps) p_t (p - onehot)``,
``A = e * w_t * (gamma + 1) * U ** gamma``; sigmoid adds per element ``e * w * u ** (gamma + 1)``
with gradient ``A * p (1 - p) (1 - 2t)``. ``w`` is ``weight`` (never ``alpha``); without
``gamma + 1`` when the modulator is detached.

A gamma schedule (``SCHEDULE_K`` thresholds ``> 0``, in the parameters after ``e``: the
thresholds, then the ``SCHEDULE_K + 1`` values) makes ``gamma`` a per-position (softmax, from
``P = (1 - eps) p_t + eps / C``) or per-element (sigmoid, from ``p_t``) value; ``SCHEDULE_K = 0``
and ``POLY = False`` compile to the kernels without them.

Numerical choices, shared by all kernels: logits are upcast to the accumulation dtype
(float32 for float16/bfloat16/float32, float64 for float64); the softmax uses an online
max/sum over class chunks (any C), with -inf maxima guarded so masked lanes never produce NaN;
``expm1`` and ``log1p``, which this Triton does not provide, use Kahan's forms
``(u - 1) * x / log(u)`` and ``log(u) * x / (u - 1)``, exact to a few ulps where the plain forms
cancel; ``(1 - p)**gamma`` is ``exp(gamma * log(1 - p))``, which is exactly 0 at ``1 - p = 0``.
Reductions write one partial sum per program (no float atomics): the same launch gives
bit-identical results.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _expm1(x):
    """exp(x) - 1 without cancellation near 0 (Kahan)."""
    u = tl.exp(x)
    um1 = u - 1.0
    safe_log = tl.where(u == 1.0, 1.0, tl.log(u))
    return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / safe_log))


# The tile every kernel works on: one program per (n, block of positions) of the (N, C, S) frame.


@triton.jit
def _position_tile(S, BLOCK_S: tl.constexpr):
    """``(pid, n, offs_s, in_s)``: program ``pid`` of a 1-D grid (no 65535 cap on any axis)
    covers row ``n`` and the ``BLOCK_S`` positions ``offs_s`` of it; ``in_s``: inside ``S``."""
    pid = tl.program_id(0).to(tl.int64)
    tiles = (S + BLOCK_S - 1) // BLOCK_S
    n = pid // tiles
    offs_s = (pid % tiles) * BLOCK_S + tl.arange(0, BLOCK_S)
    return pid, n, offs_s, offs_s < S


@triton.jit
def _not_ignored(valid, ignored_ptr, stride_mn, stride_ms, n, offs_s, in_s):
    """``valid`` without the positions the ignored mask flags (outside ``S``: ignored)."""
    skip = tl.load(ignored_ptr + n * stride_mn + offs_s * stride_ms, mask=in_s, other=1)
    return valid & (skip == 0)


@triton.jit
def _position_scale(valid, scale_ptr, HAS_SCALE: tl.constexpr, ACC: tl.constexpr):
    """The gradient factor of each position: 0 where not valid, else the 0-d scale (or 1)."""
    scale = tl.where(valid, 1.0, 0.0).to(ACC)
    if HAS_SCALE:
        scale = scale * tl.load(scale_ptr).to(ACC)
    return scale


@triton.jit
def _class_block(ptr, stride_n, stride_c, stride_s, n, offs_c, offs_s, mask, ACC: tl.constexpr):
    """The ``(BLOCK_C, BLOCK_S)`` block of a framed tensor at row ``n``, 0 outside ``mask``."""
    offsets = n * stride_n + offs_c[:, None] * stride_c + offs_s[None, :] * stride_s
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(ACC)


@triton.jit
def _log1p(x):
    """log(1 + x) for x >= 0 without losing small x (Kahan)."""
    u = 1.0 + x
    d = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * x / d)


@triton.jit
def _modulator(one_minus_p, gamma, GAMMA_ZERO: tl.constexpr):
    """(1 - p) ** gamma; exactly 0 at 1 - p = 0 for gamma > 0 and exactly 1 for gamma = 0."""
    if GAMMA_ZERO:
        return tl.full(one_minus_p.shape, 1.0, one_minus_p.dtype)
    return tl.exp(gamma * tl.log(one_minus_p))


@triton.jit
def _focal_power(one_minus_p, gamma, GAMMA_ZERO: tl.constexpr, SCHEDULED: tl.constexpr):
    """(1 - p) ** gamma for a number gamma (``_modulator``) or a tensor of a schedule (which
    may hold 0: ``0 ** 0 = 1`` there, not ``exp(0 * -inf)``)."""
    if SCHEDULED:
        return tl.where(gamma == 0.0, 1.0, tl.exp(gamma * tl.log(one_minus_p)))
    return _modulator(one_minus_p, gamma, GAMMA_ZERO)


@triton.jit
def _scheduled_gamma(params_ptr, p_t, SCHEDULE_K: tl.constexpr, ACC: tl.constexpr):
    """values[k] with k the number of thresholds <= p_t; the thresholds start at params[3],
    the values follow them."""
    gamma = tl.zeros(p_t.shape, ACC) + tl.load(params_ptr + 3 + SCHEDULE_K).to(ACC)
    for k in tl.static_range(SCHEDULE_K):
        bound = tl.load(params_ptr + 3 + k).to(ACC)
        value = tl.load(params_ptr + 4 + SCHEDULE_K + k).to(ACC)
        gamma = tl.where(p_t >= bound, value, gamma)
    return gamma


@triton.jit
def _softmax_focal_fwd_kernel(
    x_ptr,
    t_ptr,
    coef_ptr,
    scale_ptr,
    loss_ptr,
    grad_ptr,
    C,
    S,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_tn,
    stride_ts,
    ignored_ptr,  # the ignored mask, framed like the target (read when HAS_IGNORE)
    stride_mn,
    stride_ms,
    stride_gn,
    stride_gc,
    stride_gs,
    params_ptr,  # [gamma, label_smoothing, poly1, thresholds..., values...] (accumulation dtype)
    poly_w_ptr,  # (C,) weight of the Poly-1 term (read when HAS_POLY_W)
    HAS_COEF: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    DETACH: tl.constexpr,
    SMOOTH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    PER_POSITION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    POLY: tl.constexpr = False,
    HAS_POLY_W: tl.constexpr = False,
    SCHEDULE_K: tl.constexpr = 0,
):
    # One program per (n, block of positions), on a 1-D grid (no 65535 cap on any axis).
    pid, n, offs_s, in_s = _position_tile(S, BLOCK_S)
    x_row = x_ptr + n * stride_xn + offs_s * stride_xs
    neg_inf = float("-inf")
    gamma = tl.load(params_ptr).to(ACC)
    eps = tl.load(params_ptr + 1).to(ACC)

    # Pass 1: online max and sum of exponentials over class chunks -> logsumexp.
    run_max = tl.full([BLOCK_S], neg_inf, ACC)
    run_sum = tl.zeros([BLOCK_S], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = (offs_c < C)[:, None] & in_s[None, :]
        x = tl.load(x_row[None, :] + offs_c[:, None] * stride_xc, mask=mask, other=neg_inf)
        x = x.to(ACC)
        new_max = tl.maximum(run_max, tl.max(x, axis=0))
        shift = tl.where(new_max == neg_inf, 0.0, new_max)  # all -inf so far: nothing to shift
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(x - shift[None, :]), axis=0)
        run_max = new_max
    lse = tl.where(run_max == neg_inf, 0.0, run_max) + tl.log(run_sum)

    # The target class: log p_t, and q_t = p_t - 1 without cancellation.
    t = tl.load(t_ptr + n * stride_tn + offs_s * stride_ts, mask=in_s, other=0).to(tl.int64)
    # A class outside [0, C) (possible only with value checks off) counts as ignored: no read
    # ever leaves the logits.
    valid = in_s & (t >= 0) & (t < C)
    if HAS_IGNORE:
        valid = _not_ignored(valid, ignored_ptr, stride_mn, stride_ms, n, offs_s, in_s)
    t = tl.where(valid, t, 0)
    x_t = tl.load(x_row + t * stride_xc, mask=in_s, other=0.0).to(ACC)
    lp_t = x_t - lse
    q_t = _expm1(lp_t)
    SCHEDULED: tl.constexpr = SCHEDULE_K > 0
    if SCHEDULED:  # gamma per position, from the detached P = (1 - eps) p_t + eps / C
        p_sel = tl.exp(lp_t)
        if SMOOTH:
            p_sel = p_sel * (1.0 - eps) + eps / C
        gamma = _scheduled_gamma(params_ptr, p_sel, SCHEDULE_K, ACC)
        gamma_c = gamma[None, :]  # lined up with (class, position) tiles
    else:
        gamma_c = gamma
    m_t = _focal_power(-q_t, gamma, GAMMA_ZERO, SCHEDULED)
    if HAS_COEF:
        coef_t = tl.load(coef_ptr + t, mask=in_s, other=0.0).to(ACC)
    else:
        coef_t = tl.full([BLOCK_S], 1.0, ACC)
    hard_k = coef_t * (1.0 - eps)
    loss = -hard_k * m_t * lp_t
    # hard_s = k_t * m_t * (1 + gamma * u_t): the target class's share of -g.
    if DETACH or GAMMA_ZERO:
        hard_s = hard_k * m_t
    else:
        p_t = tl.exp(lp_t)
        u_t = tl.where((q_t == 0.0) | (p_t == 0.0), 0.0, p_t * lp_t / q_t)
        hard_s = hard_k * m_t * (1.0 + gamma * u_t)
    if POLY:  # + e * w_t * U ** (gamma + 1); gradient A (1 - eps) p_t (p - onehot)
        poly = tl.load(params_ptr + 2).to(ACC)
        if SMOOTH:
            big_u = (1.0 - eps) * -q_t + eps * (C - 1) / C
            mp = _focal_power(big_u, gamma, GAMMA_ZERO, SCHEDULED)
        else:
            big_u = -q_t
            mp = m_t
        if HAS_POLY_W:
            mp = mp * tl.load(poly_w_ptr + t, mask=in_s, other=0.0).to(ACC)
        loss += poly * mp * big_u
        if NEED_GRAD:
            factor = poly * mp
            if not DETACH:
                factor = factor * (gamma + 1.0)
            share = factor * tl.exp(lp_t)
            if SMOOTH:
                share = share * (1.0 - eps)
            hard_s += share

    # Pass 2 (smoothing only): the dense part k_c = eps / C * coef_c over every class.
    total = tl.zeros([BLOCK_S], ACC)  # sum_c ng_c of the dense part
    if SMOOTH:
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            in_c = offs_c < C
            mask = in_c[:, None] & in_s[None, :]
            x = tl.load(x_row[None, :] + offs_c[:, None] * stride_xc, mask=mask, other=0.0)
            lp = x.to(ACC) - lse[None, :]
            q = _expm1(lp)
            k = eps / C
            if HAS_COEF:
                k = k * tl.load(coef_ptr + offs_c, mask=in_c, other=0.0).to(ACC)[:, None]
            km = tl.where(mask, k * _focal_power(-q, gamma_c, GAMMA_ZERO, SCHEDULED), 0.0)
            loss -= tl.sum(km * lp, axis=0)
            if NEED_GRAD:
                if DETACH or GAMMA_ZERO:
                    ng = km
                else:
                    p = tl.exp(lp)
                    u = tl.where((q == 0.0) | (p == 0.0), 0.0, p * lp / q)
                    ng = km * (1.0 + gamma_c * u)
                total += tl.sum(ng, axis=0)

    loss = tl.where(valid, loss, 0.0)
    if PER_POSITION:
        tl.store(loss_ptr + n * S + offs_s, loss, mask=in_s)
    else:
        tl.store(loss_ptr + pid, tl.sum(loss, axis=0))

    if NEED_GRAD:
        # Pass 3: grad_c = scale * (p_c * (total + hard_s) - ng_c - hard_s * [c == t]).
        scale = _position_scale(valid, scale_ptr, HAS_SCALE, ACC)
        g_row = grad_ptr + n * stride_gn + offs_s * stride_gs
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            in_c = offs_c < C
            mask = in_c[:, None] & in_s[None, :]
            x = tl.load(x_row[None, :] + offs_c[:, None] * stride_xc, mask=mask, other=0.0)
            lp = x.to(ACC) - lse[None, :]
            p = tl.exp(lp)
            is_t = offs_c[:, None] == t[None, :]
            if SMOOTH:
                q = _expm1(lp)
                k = eps / C
                if HAS_COEF:
                    k = k * tl.load(coef_ptr + offs_c, mask=in_c, other=0.0).to(ACC)[:, None]
                km = k * _focal_power(-q, gamma_c, GAMMA_ZERO, SCHEDULED)
                if DETACH or GAMMA_ZERO:
                    ng = km
                else:
                    u = tl.where((q == 0.0) | (p == 0.0), 0.0, p * lp / q)
                    ng = km * (1.0 + gamma_c * u)
                g = p * total[None, :] - ng
                g += tl.where(is_t, q_t[None, :], p) * hard_s[None, :]
            else:
                g = tl.where(is_t, q_t[None, :], p) * hard_s[None, :]
            # where, not only the zero scale: an ignored position's logits may be NaN or inf,
            # and 0 * NaN would leak NaN into its gradient.
            g = tl.where(valid[None, :], g * scale[None, :], 0.0)
            ptrs = g_row[None, :] + offs_c[:, None] * stride_gc
            tl.store(ptrs, g.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sigmoid_focal_fwd_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    pw_ptr,
    alpha_ptr,
    scale_ptr,
    loss_ptr,
    grad_ptr,
    C,
    S,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_tn,
    stride_tc,
    stride_ts,
    stride_wn,
    stride_wc,
    stride_ws,
    stride_pn,
    stride_pc,
    stride_ps,
    stride_gn,
    stride_gc,
    stride_gs,
    stride_ln,
    stride_lc,
    stride_ls,
    ignored_ptr,  # the ignored mask, framed like an index target (read when HAS_IGNORE)
    stride_mn,
    stride_ms,
    params_ptr,  # [gamma, alpha, poly1, thresholds..., values...] in the accumulation dtype
    INDEX: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_PW: tl.constexpr,
    ALPHA_MODE: tl.constexpr,  # 0: none, 1: scalar, 2: per class
    HAS_IGNORE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    DETACH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    POLY: tl.constexpr = False,
    SCHEDULE_K: tl.constexpr = 0,
):
    pid, n, offs_s, in_s = _position_tile(S, BLOCK_S)
    gamma = tl.load(params_ptr).to(ACC)
    alpha = tl.load(params_ptr + 1).to(ACC)
    valid = in_s
    if INDEX:
        target = tl.load(t_ptr + n * stride_tn + offs_s * stride_ts, mask=in_s, other=0)
        target = target.to(tl.int64)
        if HAS_IGNORE:
            valid = _not_ignored(valid, ignored_ptr, stride_mn, stride_ms, n, offs_s, in_s)
    scale = _position_scale(valid, scale_ptr, HAS_SCALE, ACC)
    partial = tl.zeros([BLOCK_S], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        in_c = offs_c < C
        mask = in_c[:, None] & in_s[None, :]
        x = _class_block(x_ptr, stride_xn, stride_xc, stride_xs, n, offs_c, offs_s, mask, ACC)
        if INDEX:
            t = tl.where(offs_c[:, None] == target[None, :], 1.0, 0.0).to(ACC)
        else:
            t = _class_block(t_ptr, stride_tn, stride_tc, stride_ts, n, offs_c, offs_s, mask, ACC)
        # p, 1 - p, softplus(-x), softplus(x) from e = exp(-|x|), each without cancellation.
        e = tl.exp(-tl.abs(x))
        log_term = _log1p(e)
        big = 1.0 / (1.0 + e)
        small = e * big
        p = tl.where(x >= 0, big, small)
        q = tl.where(x >= 0, small, big)
        sp_pos = tl.maximum(-x, 0.0) + log_term
        sp_neg = tl.maximum(x, 0.0) + log_term
        pw_t = t
        if HAS_PW:
            pw = tl.load(
                pw_ptr + n * stride_pn + offs_c[:, None] * stride_pc + offs_s[None, :] * stride_ps,
                mask=mask,
                other=1.0,
            ).to(ACC)
            pw_t = pw * t
        if INDEX:  # t is exactly 0 or 1: pick the term (no 0 * inf for infinite logits)
            ce = tl.where(t > 0.0, pw_t * sp_pos, sp_neg)
        else:
            ce = pw_t * sp_pos + (1.0 - t) * sp_neg
        u = (1.0 - t) * p + t * q
        if SCHEDULE_K > 0:  # gamma per element, from the detached p_t
            gamma_e = _scheduled_gamma(params_ptr, (1.0 - t) * q + t * p, SCHEDULE_K, ACC)
            m = _focal_power(u, gamma_e, GAMMA_ZERO, True)
        else:
            gamma_e = gamma
            m = _modulator(u, gamma, GAMMA_ZERO)
        wm = m
        if ALPHA_MODE == 1:
            wm = wm * (alpha * t + (1.0 - alpha) * (1.0 - t))
        if ALPHA_MODE == 2:
            a = tl.load(alpha_ptr + offs_c, mask=in_c, other=0.0).to(ACC)[:, None]
            wm = wm * (a * t + (1.0 - a) * (1.0 - t))
        if HAS_W:
            w = tl.load(
                w_ptr + n * stride_wn + offs_c[:, None] * stride_wc + offs_s[None, :] * stride_ws,
                mask=mask,
                other=0.0,
            ).to(ACC)
            wm = wm * w
        if POLY:  # + e * w * u ** (gamma + 1): the weight, not alpha
            poly = tl.load(params_ptr + 2).to(ACC)
            pm = poly * m
            if HAS_W:
                pm = pm * w
            loss = tl.where(mask & valid[None, :], wm * ce + pm * u, 0.0)
        else:
            loss = tl.where(mask & valid[None, :], wm * ce, 0.0)
        if PER_ELEMENT:
            ptrs = (
                loss_ptr + n * stride_ln + offs_c[:, None] * stride_lc + offs_s[None, :] * stride_ls
            )
            tl.store(ptrs, loss, mask=mask)
        else:
            partial += tl.sum(loss, axis=0)
        if NEED_GRAD:
            dce = (1.0 - t) * p - pw_t * q
            if not (DETACH or GAMMA_ZERO):
                rho = tl.where(u > 0.0, p * q / tl.where(u > 0.0, u, 1.0), 0.0)
                dce += gamma_e * rho * (1.0 - 2.0 * t) * ce
            g = wm * dce
            if POLY:  # A p (1 - p) (1 - 2t), A = e w (gamma + 1) u ** gamma
                if DETACH:
                    g += pm * p * q * (1.0 - 2.0 * t)
                else:
                    g += pm * (gamma_e + 1.0) * p * q * (1.0 - 2.0 * t)
            g = tl.where(valid[None, :], g * scale[None, :], 0.0)  # NaN-safe, as above
            ptrs = (
                grad_ptr + n * stride_gn + offs_c[:, None] * stride_gc + offs_s[None, :] * stride_gs
            )
            tl.store(ptrs, g.to(grad_ptr.dtype.element_ty), mask=mask)
    if not PER_ELEMENT:
        tl.store(loss_ptr + pid, tl.sum(partial, axis=0))


@triton.jit
def _scale_grad_kernel(
    grad_ptr,
    go_ptr,
    numel,
    inner,
    classes,
    PER_POSITION: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad *= grad_output in place (a contiguous gradient). A scalar grad_output of exactly
    1 returns at once: the skip costs no synchronisation with the host."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if PER_POSITION:
        # (N, C, S) gradient, (N, S) grad_output. Every operation has the int64 offsets on one
        # side, so nothing is formed in int32 (C * S may pass 2**31).
        pos = (offs // inner) // classes * inner + offs % inner
        go = tl.load(go_ptr + pos, mask=mask, other=0.0).to(tl.float32)
    else:
        go = tl.load(go_ptr).to(tl.float32)
        if go == 1.0:
            return
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0)
    tl.store(grad_ptr + offs, (g.to(tl.float32) * go).to(grad_ptr.dtype.element_ty), mask=mask)
