"""The formula method: a parametric scale ``psi(s) = f(s, *theta)`` with sigma free.

A built-in family (:data:`PARAMETRIC_SCALES`) or any callable; torch-differentiable callables
get exact gradients, others finite differences.  :func:`solve_formula_batch` fits many response
sets at once (the bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from brainattn.errors import ConfigError
from brainattn.psychophysics._likelihood import (
    _batched_newton,
    _Core,
    _theta_fit,
    _torch_nll,
)
from brainattn.psychophysics.design import Trials, _grouped
from brainattn.psychophysics.glm import _torch_mu, binomial_loglik, mu_and_deriv

__all__ = ["PARAMETRIC_SCALES", "parse_formula", "safe_pow", "solve_formula_batch"]


# --------------------------------------------------------------------------------------------
# parametric scales (all work on numpy arrays and torch tensors, parameters scalar or (B, 1))


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _where(c, a, b):
    if _is_torch(c):
        import torch

        return torch.where(c, a, b)
    return np.where(c, a, b)


def safe_pow(a, b):
    """``a ** b`` whose derivatives stay finite where ``a = 0`` (``0 ** b`` is 0 for ``b > 0``, 1
    for ``b = 0``, inf for ``b < 0``), for any sign of ``b``; a negative ``a`` follows ``**``."""
    if not (_is_torch(a) or _is_torch(b)):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, np.exp(b * np.log(np.where(a > 0, a, 1.0))),
                            np.where(a == 0, np.where(b > 0, 0.0, np.where(b == 0, 1.0, np.inf)),
                                     np.where(a < 0, a, 1.0) ** b))
    import torch

    a = a if _is_torch(a) else torch.as_tensor(a, dtype=torch.float64)
    b = b if _is_torch(b) else torch.as_tensor(b, dtype=torch.float64)
    pos = a > 0
    inner = torch.exp(b * torch.log(torch.where(pos, a, torch.ones_like(a))))
    zero = torch.where(b > 0, torch.zeros_like(b), torch.where(b == 0, torch.ones_like(b), torch.full_like(b, np.inf)))
    neg = torch.where(a < 0, a, torch.ones_like(a)) ** b  # only read where a < 0
    return torch.where(pos, inner, torch.where(a == 0, zero, neg))


def _smax(s):
    return s.amax(dim=-1, keepdim=True) if _is_torch(s) else np.max(s, axis=-1, keepdims=True)


def _power(s, gamma):
    return safe_pow(s / _smax(s), gamma)


def _log_scale(s, c):
    # psi = log(1 + s/c) (c > 0), a log scale with a soft origin
    return (s / c).log1p() if _is_torch(s) else np.log1p(s / c)


def _saturating(s, tau):
    return 1 - ((-s / tau).exp() if _is_torch(s) else np.exp(-s / tau))


PARAMETRIC_SCALES: dict[str, tuple[Callable, tuple[str, ...], tuple[float, ...]]] = {
    "power": (_power, ("gamma",), (1.0,)),
    "log": (_log_scale, ("c",), (1.0,)),
    "saturating": (_saturating, ("tau",), (1.0,)),
}


# --------------------------------------------------------------------------------------------
# formulas written as text: parsed with ast into a closed set of operations, never eval'd

_FUNCS = {
    "exp": (np.exp, "exp"), "log": (np.log, "log"), "log1p": (np.log1p, "log1p"),
    "sqrt": (np.sqrt, "sqrt"), "abs": (np.abs, "abs"), "tanh": (np.tanh, "tanh"),
    "atan": (np.arctan, "atan"), "sin": (np.sin, "sin"), "cos": (np.cos, "cos"),
}
_REDUCE = {"max": ("amax", np.max), "min": ("amin", np.min)}
_STIM = ("s", "sx")


def parse_formula(text: str):
    """A scale ``psi = f(s, *params)`` from an expression, e.g. ``"(s / max(s)) ** gamma"`` or R's
    ``"~ (sx / max(sx))^p[1]"``.

    The stimulus is ``s`` (or R's ``sx``); every other name (or ``p[i]``) is a parameter, in
    order of first appearance.  Allowed: numbers, ``+ - * / **`` (``^`` as in R), unary minus,
    the functions exp, log, log1p, sqrt, abs, tanh, atan, sin, cos, and ``max(s)``/``min(s)``.
    The text is parsed with :mod:`ast` into these operations only (never evaluated as Python).

    Returns ``(fn, names)``: ``fn(s, *params)`` works on numpy arrays and torch tensors.
    """
    import ast

    src = str(text).strip()
    if src.startswith("~"):
        src = src[1:].strip()
    if not src:
        raise ConfigError("formula: empty expression; expected e.g. '(s / max(s)) ** gamma'")
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"formula: cannot parse {text!r} ({exc.msg}); expected an expression in s, "
                          "e.g. '(s / max(s)) ** gamma'") from None
    names: list[str] = []

    def bad(node, what):
        return ConfigError(f"formula {text!r}: {what} is not allowed; use numbers, s, parameters, "
                           "+ - * / ** (or ^), exp, log, log1p, sqrt, abs, tanh, atan, sin, cos, max(s), min(s)")

    def param(name):
        if name not in names:
            names.append(name)
        i = names.index(name)
        return lambda s, P: P[i]

    def build(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            v = float(node.value)
            return lambda s, P: v
        if isinstance(node, ast.Name):
            if node.id in _STIM:
                return lambda s, P: s
            if node.id in _FUNCS or node.id in _REDUCE:
                raise bad(node, f"the function name {node.id!r} without a call")
            return param(node.id)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id not in _STIM:
            idx = node.slice
            if isinstance(idx, ast.Constant) and isinstance(idx.value, int):
                return param(f"{node.value.id}[{idx.value}]")
            raise bad(node, "an index that is not a whole number")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            f = build(node.operand)
            return (lambda s, P: -f(s, P)) if isinstance(node.op, ast.USub) else f
        if isinstance(node, ast.BinOp):
            fa, fb = build(node.left), build(node.right)
            op = node.op
            if isinstance(op, ast.Add):
                return lambda s, P: fa(s, P) + fb(s, P)
            if isinstance(op, ast.Sub):
                return lambda s, P: fa(s, P) - fb(s, P)
            if isinstance(op, ast.Mult):
                return lambda s, P: fa(s, P) * fb(s, P)
            if isinstance(op, ast.Div):
                return lambda s, P: fa(s, P) / fb(s, P)
            if isinstance(op, (ast.Pow, ast.BitXor)):  # R writes powers with ^
                return lambda s, P: safe_pow(fa(s, P), fb(s, P))
            raise bad(node, f"the operator {type(op).__name__}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fn = node.func.id
            if fn in _FUNCS and len(node.args) == 1:
                f = build(node.args[0])
                np_f, t_name = _FUNCS[fn]

                def call(s, P, f=f, np_f=np_f, t_name=t_name):
                    v = f(s, P)
                    if _is_torch(v):
                        import torch

                        return getattr(torch, t_name)(v)
                    if _is_torch(s):
                        import torch

                        return getattr(torch, t_name)(torch.as_tensor(v, dtype=torch.float64))
                    return np_f(v)

                return call
            if fn in _REDUCE and len(node.args) == 1:
                f = build(node.args[0])
                t_name, np_f = _REDUCE[fn]

                def red(s, P, f=f, t_name=t_name, np_f=np_f):
                    v = f(s, P)
                    return getattr(v, t_name)(dim=-1, keepdim=True) if _is_torch(v) else np_f(v, axis=-1, keepdims=True)

                return red
            raise bad(node, f"the call {fn}(...)" if fn in _FUNCS or fn in _REDUCE else f"the function {fn!r}")
        raise bad(node, f"'{ast.unparse(node)}'")

    body = build(tree)
    if not any(isinstance(n, ast.Name) and n.id in _STIM for n in ast.walk(tree)):
        raise ConfigError(f"formula {text!r}: the expression does not use the stimulus s (or sx)")
    k = len(names)

    def fn(s, *params):
        if len(params) != k:
            raise ConfigError(f"formula {text!r}: expected {k} parameters ({', '.join(names)}), got {len(params)}")
        out = body(s, params)
        if _is_torch(s) and not _is_torch(out):
            import torch

            out = torch.as_tensor(out, dtype=torch.float64)
        return out * (s * 0 + 1)  # broadcast a constant part to the stimulus' shape

    fn.__name__ = src
    return fn, names


def _resolve_formula(formula, p0, stimulus):
    if isinstance(formula, str) and formula in PARAMETRIC_SCALES:
        fn, names, start = PARAMETRIC_SCALES[formula]
        if formula in ("log", "saturating"):
            start = (float(np.median(stimulus)),)
        return formula, fn, list(names), np.atleast_1d(np.asarray(p0 if p0 is not None else start, dtype=float))
    if isinstance(formula, str):
        fn, names = parse_formula(formula)
        p0 = np.ones(len(names)) if p0 is None else np.atleast_1d(np.asarray(p0, dtype=float))
        if len(p0) != len(names):
            raise ConfigError(f"p0: formula {formula!r} has {len(names)} parameters ({', '.join(names)}), "
                              f"got {len(p0)} start values")
        return fn.__name__, fn, names, p0
    if callable(formula):
        if p0 is None:
            raise ConfigError("p0: a callable formula needs start values p0 (one per parameter)")
        p0 = np.atleast_1d(np.asarray(p0, dtype=float))
        name = getattr(formula, "__name__", "callable")
        return name, formula, [f"theta[{i}]" for i in range(len(p0))], p0
    raise ConfigError(f"formula: expected a name ({sorted(PARAMETRIC_SCALES)}), an expression in s or a "
                      f"callable, got {formula!r}")


def _fit_formula(trials: Trials, link, formula, p0, unconstrained_ll: float) -> _Core:
    import torch
    from scipy.stats import chi2

    name, fn, pnames, p0 = _resolve_formula(formula, p0, trials.stimulus)
    p = trials.n_levels
    k = len(p0)
    if k + 1 > p - 1:
        raise ConfigError(f"formula: {k} parameters + sigma cannot be identified from {p} levels "
                          f"(at most {p - 2} parameters)")
    s_np = trials.stimulus.astype(np.float64)
    s_t = torch.as_tensor(s_np)
    torch_ok = True
    try:  # differentiable in torch? (a numpy-only callable drops the graph or raises)
        th = torch.as_tensor(p0, dtype=torch.float64).clone().requires_grad_(True)
        out = fn(s_t, *th)
        torch_ok = (isinstance(out, torch.Tensor) and out.shape == s_t.shape
                    and (k == 0 or out.requires_grad))
    except Exception:
        torch_ok = False

    def psi_fn(theta):
        if isinstance(theta, torch.Tensor):
            return fn(s_t, *theta)
        return np.asarray(fn(s_np, *theta), dtype=float)

    def psi_np(params):
        return np.asarray(psi_fn(np.asarray(params, dtype=float)), dtype=float)

    _check_identifiable(psi_np, p0, name)
    if torch_ok:
        nll = _torch_nll(trials, link, psi_fn, log_sigma=False)
    else:
        Xf = trials.design_matrix(drop_first=False)
        Xu, _inv, m, kk = _grouped(Xf, trials.resp.astype(float))

        def nll(theta):
            psi = psi_np(theta[:-1])
            if psi.shape != s_np.shape or not np.all(np.isfinite(psi)):
                return 1e300
            if theta[-1] == 0:
                return 1e300
            mu, muc, _ = mu_and_deriv(link, Xu @ psi / theta[-1])
            return -float(binomial_loglik(kk, mu, muc, m))

    # sigma start: fit sigma with theta at p0 by a 1-d search
    from scipy.optimize import minimize_scalar

    def nll_np(theta):
        if torch_ok:
            return float(nll(torch.as_tensor(np.asarray(theta, dtype=float))).detach())
        return nll(theta)

    # sigma is R's signed parameter: a decreasing f (e.g. a negative exponent) pairs with sigma < 0
    starts = []
    for sign in (1.0, -1.0):
        r = minimize_scalar(lambda ls, sign=sign: nll_np(np.r_[p0, sign * np.exp(ls)]), bounds=(-8, 5),
                            method="bounded")
        starts.append((r.fun, sign * np.exp(r.x)))
    s0 = min(starts)[1]
    th, cov, fmin, n_iter, conv = _theta_fit(nll, np.r_[p0, s0], torch_ok=torch_ok)
    _check_identifiable(psi_np, th[:-1], name, at_optimum=True)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    sigma = float(th[-1])
    psi = psi_np(th[:-1])
    # delta method for the scale values
    J = np.empty((p, k))
    for j in range(k):
        h = 1e-6 * max(1.0, abs(th[j]))
        e = np.zeros(k)
        e[j] = h
        J[:, j] = (psi_np(th[:-1] + e) - psi_np(th[:-1] - e)) / (2 * h)
    psi_se = np.sqrt(np.clip(np.einsum("pi,ij,pj->p", J, cov[:k, :k], J), 0, None))
    Xf = trials.design_matrix(drop_first=False)
    mu = mu_and_deriv(link, Xf @ psi / sigma)[0]
    ll = -fmin
    lr = max(0.0, 2.0 * (unconstrained_ll - ll))
    df = (p - 1) - (k + 1)
    info = {"name": name, "names": pnames, "params": th[:-1].copy(), "bse": se[:-1].copy(),
            "fn": fn, "torch_ok": torch_ok,
            "lr_stat": lr, "lr_df": df, "lr_p": float(chi2.sf(lr, df)) if df > 0 else float("nan"),
            "unconstrained_loglik": unconstrained_ll}
    return _Core(psi, psi_se, sigma, se[-1], ll, k + 1, mu, th, se, pnames + ["sigma"],
                 conv, formula=info, cov_psi=J @ cov[:k, :k] @ J.T, n_iter=n_iter)


def _check_identifiable(psi_np, params, name, at_optimum: bool = False):
    """The map (params, sigma) -> scale differences / sigma must have full column rank."""
    params = np.asarray(params, dtype=float)
    k = len(params)
    base = psi_np(params)
    if not np.all(np.isfinite(base)):
        raise ConfigError(f"formula {name}: the scale is not finite at parameters {params.tolist()}")
    d0 = base[1:] - base[0]
    J = np.empty((len(d0), k + 1))
    for j in range(k):
        h = 1e-5 * max(1.0, abs(params[j]))
        e = np.zeros(k)
        e[j] = h
        a, b = psi_np(params + e), psi_np(params - e)
        J[:, j] = ((a[1:] - a[0]) - (b[1:] - b[0])) / (2 * h)
    J[:, k] = -d0  # d/d sigma of d0 / sigma at sigma = 1
    sv = np.linalg.svd(J, compute_uv=False)
    if sv[0] == 0 or sv[-1] / sv[0] < 1e-7:
        where = "the maximum-likelihood estimate (the fit ran to a boundary)" if at_optimum else "p0"
        raise ConfigError(
            f"formula {name}: its {k} parameters and sigma cannot be identified (the scale depends on "
            f"fewer than {k + 1} combinations of them at {where} {params.tolist()}); drop or fix a parameter"
        )


def solve_formula_batch(Xf: np.ndarray, m: np.ndarray, K: np.ndarray, stimulus: np.ndarray, fn, link,
                        theta0: np.ndarray, *, max_iter: int = 50, tol: float = 1e-8):
    """Maximum likelihood of a parametric scale for B response sets at once (batched Newton).

    Parameters
    ----------
    Xf : (R, p) full difference design (no level dropped); m : (R,) trials per row;
    K : (B, R) successes; fn : ``psi = fn(s, *params)`` broadcasting params of shape (B, 1)
    against s of shape (1, p); theta0 : (k + 1,) start (params..., sigma).

    Returns
    -------
    theta (B, k + 1), converged (B,) bool, mu (B, R) fitted probabilities.
    """
    import torch

    Xt = torch.as_tensor(Xf, dtype=torch.float64)
    mt = torch.as_tensor(m, dtype=torch.float64)
    Kt = torch.as_tensor(K, dtype=torch.float64)
    st = torch.as_tensor(stimulus, dtype=torch.float64)[None, :]
    B = Kt.shape[0]
    q = len(theta0)

    def nll(Th):
        psi = fn(st, *[Th[:, j : j + 1] for j in range(q - 1)])
        psi = psi.expand(B, -1) if psi.shape[0] == 1 else psi
        eta = psi @ Xt.T / Th[:, -1:]
        mu = _torch_mu(link, eta).clamp(1e-300, 1 - 1e-16)
        return -(Kt * torch.log(mu) + (mt - Kt) * torch.log((1 - mu).clamp_min(1e-300))).sum(1), mu

    Th0 = torch.as_tensor(np.broadcast_to(theta0, (B, q)).copy(), dtype=torch.float64)
    Th, ok, mu = _batched_newton(nll, Th0, max_iter=max_iter, tol=tol)
    return Th.numpy(), ok.numpy(), mu.numpy()
