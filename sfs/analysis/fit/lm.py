"""The vectorised solver: Levenberg-Marquardt on the weighted Huber objective, many fits at once.

All of a bootstrap's fits are rows of one solve in numpy (no scipy): the model is evaluated
once per distinct x, not per model (seeds share x); a resample's n_x - 1 draws at each x
fill n_x - 1 slots of an (x, slot, resample) array, resamples on the contiguous axis, so
each pass over the residuals is one long vectorised loop and needs no weights
(``_Rows``); each trial point's objective and gradient are one pass (``_evaluate``);
finished rows leave the working arrays; large work arrays are reused (``scratch``).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from sfs.analysis.fit.data import _Prepared
from sfs.analysis.fit.scratch import _scratch, _take, own_scratch

log = logging.getLogger(__name__)

LM_MAX_ITER = 60
# Point fits: a few rows, so a slow one may take longer (a near-flat valley, E against
# alpha, can take LM ~150 iterations where the starts are far from the optimum).
LM_MAX_ITER_POINT = 500
LM_LAM0 = 1e-4  # initial damping: starts are good, so nearly Newton steps from the first
# LM stops a row when a Newton step would gain at most this fraction of its objective:
# tight for single fits; for bootstrap resamples 1e-10 saves an iteration and leaves alpha
# within 1e-5 of scipy's optimum on the same weights (checked on 8 datasets x 200 resamples,
# each form, all models and held out), a few ten-thousandths of its standard error.
LM_RTOL = 1e-13
LM_RTOL_BOOT = 1e-10


@dataclass
class _Rows:
    """The data of B fits in the solver's layout: each x's models in slots, rows last, so
    every elementwise pass runs along a long contiguous axis (B) and sums over models are
    sums over the short middle axis.

    Either every slot has its own weight (W: a general weighting of the models, one slot
    per model) or, for bootstrap resamples with as many models at every x, the slots hold
    the models each resample drew, one slot per draw, all of weight gw (W is None: no
    weight pass at all)."""

    Y: np.ndarray  # (kk, M, B) or (kk, M, 1): log loss in each slot
    W: np.ndarray | None  # (kk, M, B) slot weights; None: every slot weighs gw
    gw: float
    Sw: np.ndarray  # (kk, B) total weight at each x (scales the damping)

    def take(self, keep: np.ndarray, tag: str) -> _Rows:
        """The rows keep, into scratch arrays named by tag (not those holding self)."""
        Y = self.Y if self.Y.shape[-1] == 1 else _take(self.Y, keep, "rows_y" + tag)
        W = None if self.W is None else _take(self.W, keep, "rows_w" + tag)
        return _Rows(Y, W, self.gw, self.Sw[:, keep])

    def part(self, i0: int, i1: int) -> _Rows:
        """Rows i0:i1 (views)."""
        Y = self.Y if self.Y.shape[-1] == 1 else self.Y[..., i0:i1]
        W = None if self.W is None else self.W[..., i0:i1]
        return _Rows(Y, W, self.gw, self.Sw[:, i0:i1])


def _weighted_rows(d: _Prepared, W: np.ndarray, kk: int) -> _Rows:
    """Rows for general model weights W (B, n) on the first kk x values: one slot per model
    (an empty slot, where an x has fewer models than another, weighs 0)."""
    n = d.y.size
    Wx = np.zeros((n + 1, W.shape[0]))
    Wx[:n] = W.T
    W3 = Wx[d.slots[:kk]]
    Y3 = np.append(d.y, 0.0)[d.slots[:kk]][:, :, None]
    return _Rows(Y3, W3, 1.0, W3.sum(axis=1))


class _Model:
    """The constants of one solve: the x values' u = log x - ubar (kk,), lref and delta (one
    each, or one per row (B,) where the rows are several datasets of one design: ``merge``),
    and the matrices that combine per-x sums into the solver's pieces."""

    def __init__(self, u: np.ndarray, lref: float | np.ndarray, delta: float | np.ndarray):
        one = np.ones_like(u)
        self.u, self.ucol, self.lref, self.delta = u, u[:, None], lref, delta
        self.U1 = np.stack([one, -u])  # g0 g1 from sums of C psi s; h02 h12 from C s q
        self.Uh = np.stack([one, u * u, -u])  # h00 h11 h01 from C s^2
        self.Ud = np.stack([one, u * u])  # d0 d1 from Sw s^2

    def take(self, keep: np.ndarray) -> _Model:
        """The constants of the rows keep (self where they are the same for every row)."""
        if np.ndim(self.lref) == 0:
            return self
        return _Model(self.u, self.lref[keep], self.delta[keep])


def _evaluate(P: np.ndarray, rows: _Rows, m: _Model, N: np.ndarray) -> np.ndarray:
    """The objective F (B,) of the saturating model (the power law is eta = 0) at P (3, B)
    for every row, and into N (12, B) the Levenberg-Marquardt pieces there.

    N rows: g (minus the gradient: 3), the Gauss-Newton Hessian with Huber's own curvature
    (1 inside the threshold, 0 outside) as h00 h11 h01 h02 h12 h22, and the diagonal of the
    least-squares Gauss-Newton matrix (every weight: positive, it scales the damping).

    The model at each x: log L_hat = t + log1p(v), t = b - alpha u the log power-law term and
    v = E exp(-t) (logaddexp(t, log E), and exactly t when E = 0); its Jacobian J = [s, -u s,
    q], s = 1 / (1 + v) the power term's share of L_hat and q = lref / L_hat. Per model,
    r = y - log L_hat, psi = clip(r, -delta, delta), huber = psi r - psi^2 / 2."""
    b, al, eta = P
    mt, emt, v, f, s, q, Ch, Cr = _scratch("ev_kb", (8, m.u.size, P.shape[1]))
    np.multiply(m.ucol, al, out=mt)  # -t
    mt -= b
    np.exp(mt, out=emt)
    np.multiply(emt, eta * m.lref, out=v)
    np.log1p(v, out=f)
    f -= mt
    np.add(v, 1.0, out=s)
    np.reciprocal(s, out=s)
    np.multiply(emt, s, out=q)
    q *= m.lref
    shape = rows.Y.shape[:2] + (P.shape[1],)
    R, PS = _scratch("ev_r", shape), _scratch("ev_psi", shape)
    IN = _scratch("ev_in", shape, bool)
    np.subtract(rows.Y, f[:, None, :], out=R)
    np.clip(R, -m.delta, m.delta, out=PS)
    np.equal(PS, R, out=IN)  # |r| <= delta
    if rows.W is None:
        M = shape[1]
        np.multiply(IN.view(np.int8).sum(axis=1, dtype=np.int8 if M < 128 else np.int64),
                    rows.gw, out=Ch)
        np.sum(PS, axis=1, out=Cr)
        Cr *= rows.gw
        F = np.einsum("kmb,kmb->b", PS, R)
        F -= 0.5 * np.einsum("kmb,kmb->b", PS, PS)
        F *= rows.gw
    else:
        WP, T = _scratch("ev_wpsi", shape), _scratch("ev_t", shape)
        np.multiply(rows.W, PS, out=WP)
        np.multiply(rows.W, IN, out=T)
        np.sum(T, axis=1, out=Ch)
        np.sum(WP, axis=1, out=Cr)
        F = np.einsum("kmb,kmb->b", WP, R)
        F -= 0.5 * np.einsum("kmb,kmb->b", WP, PS)
    t = emt  # scratch from here on
    np.matmul(m.U1, np.multiply(Cr, s, out=t), out=N[0:2])
    np.einsum("kb,kb->b", Cr, q, out=N[2])
    Chs = np.multiply(Ch, s, out=v)
    np.matmul(m.Uh, np.multiply(Chs, s, out=t), out=N[3:6])
    np.matmul(m.U1, np.multiply(Chs, q, out=t), out=N[6:8])
    np.einsum("kb,kb->b", np.multiply(Ch, q, out=t), q, out=N[8])
    np.multiply(rows.Sw, s, out=t)
    t *= s
    np.matmul(m.Ud, t, out=N[9:11])
    np.einsum("kb,kb->b", np.multiply(rows.Sw, q, out=t), q, out=N[11])
    return F


# Index arrays of the 3x3 algebra in _lm: the diagonal of H among the pieces of _evaluate,
# the (i, j) of the off-diagonal entries h01 h02 h12, the products in their cofactors, and the
# off-diagonal terms of the product of the symmetric adjugate (entries a00 a11 a22 a01 a02
# a12) with a vector y.
_HDIAG = np.array([3, 4, 8])
_OFF_I, _OFF_J = np.array([0, 0, 1]), np.array([1, 2, 2])
_ADJ_I, _ADJ_J = np.array([1, 0, 0]), np.array([2, 2, 1])
_ADJ_B, _Y_B = np.array([3, 3, 4]), np.array([1, 0, 0])  # a01 y1, a01 y0, a02 y0
_ADJ_C, _Y_C = np.array([4, 5, 5]), np.array([2, 2, 1])  # a02 y2, a12 y2, a12 y1


@dataclass
class _LMCall:
    """The arguments of one ``_lm`` solve, as a fit's steps hand it out (``solve``)."""

    P: np.ndarray  # (3, B)
    F: np.ndarray  # (B,)
    N: np.ndarray  # (12, B)
    rows: _Rows
    m: _Model
    lo: np.ndarray  # (3, B)
    hi: np.ndarray  # (3, B)
    pinned: np.ndarray  # (B,)
    fscale: float | np.ndarray
    rtol: float = LM_RTOL
    max_iter: int = LM_MAX_ITER

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        return _lm(self.P, self.F, self.N, self.rows, self.m, self.lo, self.hi, self.pinned,
                   self.fscale, self.rtol, self.max_iter)

    def key(self) -> tuple | None:
        """Calls of one key can be solved as one (``merge``): one design (the same x values
        and slots), tolerance and iteration limit. None for a call of one row, which is
        solved alone (a solve of one row takes other numpy paths than one of several)."""
        if self.P.shape[1] < 2:
            return None
        return (self.rows.Y.shape[:2], self.rows.W is None, self.rows.gw, self.m.u.tobytes(),
                self.rtol, self.max_iter)


def solve(call: _LMCall):
    """One solve, as a step of a fit written as a generator: ``P, F = yield from
    solve(call)``. Whoever runs the steps solves it alone (``run_steps``) or together with
    other fits' solves of the same key (``run_merged``)."""
    return (yield call)


def run_steps(steps: Generator[_LMCall, tuple, object]):
    """Run one fit's steps, each solve alone; returns what the steps return."""
    try:
        call = next(steps)
        while True:
            call = steps.send(call.run())
    except StopIteration as stop:
        return stop.value


def run_merged(steps: list[Generator[_LMCall, tuple, object]]) -> list:
    """Run several fits' steps together, each solve of one key (``_LMCall.key``) with the
    others waiting on one (``merge``): the numpy calls of each iteration serve every fit at
    once. A row's arithmetic is the same whichever rows share its solve (elementwise, or
    reductions along the short axes; never a solve of one row), so each fit returns what it
    returns run alone, to the last bit (tests/test_fit_merged.py). Each fit's scratch arrays
    are its own while it runs (its steps keep some across a solve); returns the fits' values."""
    results: list = [None] * len(steps)
    spaces: list[dict] = [{} for _ in steps]
    waiting: dict[int, _LMCall] = {}

    def advance(i: int, value) -> None:
        with own_scratch(spaces[i]):
            try:
                waiting[i] = steps[i].send(value)
            except StopIteration as stop:
                results[i] = stop.value
                spaces[i].clear()
                waiting.pop(i, None)

    for i in range(len(steps)):
        advance(i, None)
    while waiting:
        groups: dict[tuple, list[int]] = {}
        for i, call in waiting.items():
            groups.setdefault(call.key() or ("alone", i), []).append(i)
        for members in groups.values():
            calls = [waiting[i] for i in members]
            if len(calls) == 1:
                outs = [calls[0].run()]
            else:
                P, F = merge(calls).run()
                ends = np.cumsum([call.P.shape[1] for call in calls])[:-1]
                outs = list(zip(np.split(P, ends, axis=1), np.split(F, ends)))
            for i, out in zip(members, outs):
                advance(i, out)
    return results


def merge(calls: list[_LMCall]) -> _LMCall:
    """One call of the rows of several calls of one key, in order, each row with its own
    call's lref, delta and fscale."""
    sizes = [call.P.shape[1] for call in calls]
    first = calls[0]

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(call, name) for call in calls], axis=-1)

    Y = np.concatenate([np.broadcast_to(call.rows.Y, call.rows.Y.shape[:2] + (size,))
                        for call, size in zip(calls, sizes)], axis=-1)
    W = None if first.rows.W is None else np.concatenate([call.rows.W for call in calls], axis=-1)
    rows = _Rows(Y, W, first.rows.gw, np.concatenate([call.rows.Sw for call in calls], axis=-1))
    m = _Model(first.m.u, np.repeat([call.m.lref for call in calls], sizes),
               np.repeat([call.m.delta for call in calls], sizes))
    return _LMCall(joined("P"), joined("F"), joined("N"), rows, m, joined("lo"), joined("hi"),
                   joined("pinned"), np.repeat([call.fscale for call in calls], sizes),
                   first.rtol, first.max_iter)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a[0] b[0] + a[1] b[1] + a[2] b[2], (3, B) each -> (B,): elementwise, so that a row's
    value cannot depend on the rows beside it. With einsum (and vecdot for few rows) here,
    a few resamples of merged fits came out a last bit different from the same fits alone
    (tests/test_fit_merged.py failed; which call's loop differed was not pinned down)."""
    out = np.multiply(a[0], b[0])
    out += a[1] * b[1]
    out += a[2] * b[2]
    return out


def _lm(P: np.ndarray, F: np.ndarray, N: np.ndarray, rows: _Rows, m: _Model,
        lo: np.ndarray, hi: np.ndarray, pinned: np.ndarray, fscale: float | np.ndarray,
        rtol: float = LM_RTOL, max_iter: int = LM_MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted Huber objective for every row of P (3, B) at once, from P (in
    the box) with its objective F and pieces N (``_evaluate``; N is overwritten).

    Rows are saturating fits; a power-law row is one whose eta is pinned at 0 (pinned: (B,)
    bool), so every fit of a bootstrap goes through one loop. lo, hi: (3, B) box bounds.

    Levenberg-Marquardt: each step solves (H + lam diag(Hc)) step = g, H the Gauss-Newton
    Hessian of the Huber loss (Newton on Huber settles in a few steps, where plain IRLS
    crawls) and Hc the least-squares Gauss-Newton matrix. A step is kept only where the
    objective does not rise. At a fixed point the gradient of the Huber objective is zero:
    the same estimator as the scipy fit. A parameter at a bound whose gradient points
    outward is held fixed (an active set) and steps are clipped into the box. A row is done
    when a nearly undamped step could gain at most rtol of its objective (g . step, about
    twice the predicted gain), or when no damping finds descent. A parameter at a bound is
    held there until the others have converged, and only then released if its gradient
    points inside (released at once, rows whose optimum is on the E = 0 bound zig-zag on and
    off it for many iterations). Each trial point's objective and pieces are computed once
    (a kept trial is the next iterate), and finished rows leave the working arrays in
    batches (until then they stand still). Returns parameters (3, B) and objectives."""
    B = P.shape[1]
    P, F = np.clip(P, lo, hi), F.copy()
    P_out, F_out = P.copy(), F.copy()
    act = np.arange(B)  # the output rows the working arrays hold
    fin = np.zeros(B, dtype=bool)  # finished rows not yet compacted away (held still)
    lam, nu = np.full(B, LM_LAM0, dtype=float), np.full(B, 2.0)
    hold = np.ones((3, B), dtype=bool)
    n_compact = 0
    Nn = _scratch("lm_trial", N.shape)  # the trial point's pieces (then swapped with N's)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_iter):
            g = N[0:3]
            atb = P <= lo
            outward = atb & (g < 0)
            athi = P >= hi
            atb |= athi
            athi &= g > 0
            outward |= athi
            atb &= hold  # at a bound and held there until the rest has converged
            fixed = outward | atb
            fixed[2] |= pinned
            fixed |= fin  # finished rows hold still
            g = np.where(fixed, 0.0, g)
            # (H + lam diag(Hc)) step = g with fixed parameters decoupled (identity row and
            # column), by the adjugate after Jacobi scaling (unit diagonal: the error is about
            # eps times the condition number, as for LU; np.linalg.solve pays one LAPACK call
            # per 3x3 system, several times slower here). A singular row gives inf/nan: its
            # trial is refused.
            D = N[9:12]
            scale = np.maximum(D, np.multiply(D.max(axis=0), 1e-12) + 1e-300)
            scale *= lam
            Hd = N[_HDIAG]  # h00 h11 h22
            scale += Hd
            dsc = np.where(fixed, 1.0, scale)
            np.sqrt(dsc, out=dsc)
            np.reciprocal(dsc, out=dsc)
            o = dsc[_OFF_I]
            o *= dsc[_OFF_J]
            o *= N[5:8]  # h01 h02 h12 -> b c e: the scaled matrix [[1 b c] [b 1 e] [c e 1]]
            o = np.where(fixed[_OFF_I] | fixed[_OFF_J], 0.0, o)
            adj = np.empty((6, o.shape[1]))
            np.square(o[::-1], out=adj[:3])
            np.subtract(1.0, adj[:3], out=adj[:3])  # 1-e^2 1-c^2 1-b^2
            np.multiply(o[_ADJ_I], o[_ADJ_J], out=adj[3:])
            adj[3:] -= o  # ce-b be-c bc-e
            y = g * dsc
            step = adj[:3] * y  # adj y, adj symmetric: a00 a11 a22 a01 a02 a12
            step += adj[_ADJ_B] * y[_Y_B]
            step += adj[_ADJ_C] * y[_Y_C]
            det = o[0] * adj[3]
            det += o[1] * adj[4]
            det += adj[0]
            dsc /= det
            step *= dsc
            gstep = _dot(g, step)
            done = np.abs(gstep, out=gstep) <= rtol * (F + fscale)
            done &= lam <= 1e-2
            # Converged with a parameter held at its bound although its gradient points
            # inside: release it and go on (a KKT point needs every held gradient outward).
            atb &= ~outward
            atb[2] &= ~pinned
            release = done & atb.any(axis=0)
            if release.any():
                hold &= ~(atb & release)
                done &= ~release
            done |= lam >= 1e12
            fin |= done
            n_fin = np.count_nonzero(fin)
            if n_fin == fin.size:
                break
            if n_fin * 4 >= fin.size > 32:  # compact: the finished rows leave (when it pays)
                P_out[:, act], F_out[act] = P, F
                keep = np.flatnonzero(~fin)
                if keep.size == 1:  # and one finished row, holding still: never a solve of one
                    # row, whose numpy calls (matmul, einsum) take other paths than for two or
                    # more, so that a row's numbers do not depend on the rows beside it (merge)
                    keep = np.sort(np.append(keep, np.flatnonzero(fin)[0]))
                tag = str(n_compact % 2)
                n_compact += 1
                N = _take(N, keep, "lm_n" + tag)
                Nn = _scratch("lm_t" + tag, N.shape)
                rows = rows.take(keep, tag)
                m = m.take(keep)
                if np.ndim(fscale):
                    fscale = fscale[keep]
                act, P, F, g, step, Hd = (act[keep], P[:, keep], F[keep], g[:, keep],
                                          step[:, keep], Hd[:, keep])
                lo, hi, pinned = lo[:, keep], hi[:, keep], pinned[keep]
                lam, nu, fin, hold = lam[keep], nu[keep], fin[keep], hold[:, keep]
            # A finished row takes no further step, this iteration's included: whether the
            # loop goes on (other rows still moving) must not change a row's result (merge).
            step[:, fin] = 0.0
            Pn = step
            Pn += P
            np.maximum(Pn, lo, out=Pn)
            np.minimum(Pn, hi, out=Pn)
            Fn = _evaluate(Pn, rows, m, Nn)
            ok = Fn <= F * (1 + 1e-15) + 1e-300
            # Nielsen's (1999) damping update from the gain ratio rho = actual / predicted
            # decrease: gentle on success, doubling on failure (x10 and /10 zig-zag in the
            # curved valley between E and alpha, one refused step for every kept one).
            dP = Pn - P
            quad = _dot(N[5:8], dP[_OFF_I] * dP[_OFF_J])
            quad *= 2
            quad += _dot(Hd, dP * dP)
            pred = _dot(g, dP)
            pred -= 0.5 * quad
            rho = np.subtract(F, Fn)
            rho /= np.where(pred > 0, pred, np.inf)
            rho *= 2
            rho -= 1
            fac = rho * rho
            fac *= rho
            np.subtract(1, fac, out=fac)
            np.maximum(fac, 1 / 3, out=fac)
            np.minimum(fac, 2.0, out=fac)
            fac *= lam
            lam *= nu
            lam = np.where(ok, fac, lam)
            np.maximum(lam, 1e-12, out=lam)
            np.minimum(lam, 1e12, out=lam)
            nu *= 2
            nu = np.where(ok, 2.0, nu)
            # The kept trials are the new iterates: take the trial arrays, with the refused
            # rows' old values copied in (usually few).
            F = np.where(ok, Fn, F)
            refused = np.flatnonzero(~ok)
            if refused.size:
                Pn[:, refused] = P[:, refused]
                Nn[:, refused] = N[:, refused]
            P, N, Nn = Pn, Nn, N
        else:
            if not fin.all():
                log.debug("LM: %d of %d rows stopped at %d iterations",
                          int(np.count_nonzero(~fin)), B, max_iter)
    P_out[:, act], F_out[act] = P, F  # rows still moving keep their best point so far
    return P_out, F_out
