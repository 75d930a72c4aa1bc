"""Least-squares bootstrap of the echo canceller: the exact time-domain LS fit while unconverged.

The partitioned-block Kalman filter (:mod:`mica.array_dsp.aec`) learns each bin from the
block's error spectrum, which also holds the other bins' misadjustment (the overlap-save
error is a rectangular half frame: leakage), so at the start of playback it converges
slower than the data allow. For the first seconds after the far end starts (and after an
echo-path change or a new bulk delay) the canceller therefore also solves the regularised
least-squares problem on *all* samples so far, every few blocks, and takes its solution
per mic when it explains those samples better than the Kalman filter's (then the Kalman
filter goes on from it):

``h = argmin sum_{n in S} (y(n) - x_n^T h)^2 + lam t_0 |h|^2``, ``x_n = [x(n) .. x(n-L+1)]``
(``L = P N`` taps, one reference; several: see :class:`LsBootstrap`), ``S`` the segment's
samples less the double-talk blocks (near-end speech must not be fitted). Normal equations
``(R + lam t_0 I) h = r`` with ``r_k = sum_{n in S} y(n) x(n-k)``;
``R = sum_{n in S} x_n x_n^T`` is not Toeplitz, but it
is the Toeplitz matrix ``T`` of the autocorrelation ``t_k = sum_n x(n) x(n-k)`` of the
segment's reference (with the ``L - 1`` samples before it; zero outside) less the rows
``T`` counts that are not in ``S``: the ``L - 1`` rows that start before the segment, the
``L - 1`` rows that run past its end, and the double-talk gaps (the covariance method
written as the autocorrelation method minus its pre- and post-window rows: Haykin,
"Adaptive Filter Theory", ch. 8). So ``R v`` costs a few FFTs of about ``2 L`` points
(``T v`` by circulant embedding, each excluded range by FFT convolution and correlation)
and the system is solved by conjugate gradients preconditioned with Strang's circulant
approximation of ``T`` (T. Chan & Strang, "Toeplitz equations by conjugate gradients with
circulant preconditioner", 1989), warm-started from the last solution.

Per block the statistics cost ``N L (1 + n_mic)`` multiply-adds (:func:`ls_accumulate_kernel`,
numpy reference :func:`ls_accumulate_reference`); each refit a few tens of FFT matvecs.
Only during the bootstrap (``AecParams.bootstrap_s`` of far-end data): the steady-state
cost is unchanged.

A new bulk delay (:meth:`LsBootstrap.redelay`) does not throw the segment away: it keeps
the undelayed reference (with ``max_delay + L - 1`` samples before the segment) and the
mics as they came, and rebuilds ``buf``, ``t``, ``r`` and ``yy`` for the new delay by FFT
correlation, so the first refit after a delay estimate fits every sample since the far
end started, not only those after the estimate.

Shapes: segment buffer ``(L - 1 + S_max,)`` float64 (``buf[L - 1 + i]`` = the segment's
sample ``i``), ``t (L,)``, ``r (n_mic, L)``, ``yy (n_mic,)`` float64.
"""

from __future__ import annotations

import numpy as np

from mica.array_dsp.jit import kernel


@kernel
def ls_accumulate_kernel(
    buf: np.ndarray,
    offset: int,
    x: np.ndarray,
    y: np.ndarray,
    include: bool,
    t: np.ndarray,
    r: np.ndarray,
    yy: np.ndarray,
) -> None:
    """Append the reference block ``x (N,)`` at ``buf[offset:]`` and add its lag products:
    ``t_k += sum_i x(n_i) x(n_i - k)`` (all blocks: ``T``'s autocorrelation), and, if
    ``include``, ``r_mk += sum_i y_m(n_i) x(n_i - k)``, ``yy_m += sum_i y_m(n_i)^2`` for the
    mic block ``y (n_mic, N)`` (float32). ``buf`` float64, samples before index 0 are 0."""
    n = x.shape[0]
    n_lags = t.shape[0]
    for i in range(n):
        buf[offset + i] = x[i]
    for i in range(n):
        j = offset + i
        xi = buf[j]
        kmax = min(n_lags - 1, j)
        for k in range(kmax + 1):
            t[k] += xi * buf[j - k]
    if include:
        for m in range(y.shape[0]):
            for i in range(n):
                j = offset + i
                ym = np.float64(y[m, i])
                yy[m] += ym * ym
                kmax = min(n_lags - 1, j)
                for k in range(kmax + 1):
                    r[m, k] += ym * buf[j - k]


def ls_accumulate_reference(
    buf: np.ndarray,
    offset: int,
    x: np.ndarray,
    y: np.ndarray,
    include: bool,
    t: np.ndarray,
    r: np.ndarray,
    yy: np.ndarray,
) -> None:
    """Numpy reference of :func:`ls_accumulate_kernel` (same arguments)."""
    n, n_lags = x.shape[0], t.shape[0]
    buf[offset : offset + n] = x
    lo = offset - n_lags + 1
    seg = np.concatenate([np.zeros(max(0, -lo)), buf[max(0, lo) : offset + n]])
    t += np.correlate(seg, buf[offset : offset + n], "valid")[::-1]
    if include:
        y64 = y.astype(np.float64)
        yy += np.sum(y64**2, axis=1)
        for m in range(y.shape[0]):
            r[m] += np.correlate(seg, y64[m], "valid")[::-1]


def refit_due(included_blocks: int, every_blocks: int, growth: float) -> bool:
    """Whether a refit is due after ``included_blocks``: at ``n_0 = every_blocks`` and then
    ``n_{i+1} = n_i + max(every_blocks, floor(growth n_i))`` (the solution changes less as
    data accumulate: a geometric schedule bounds the refits to ``O(log)``)."""
    due = every_blocks
    while due < included_blocks:
        due += max(every_blocks, int(growth * due))
    return due == included_blocks


def _fast_len(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` (a fast FFT size)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


class LsBootstrap:
    """Accumulates one segment's LS statistics and solves them (see the module doc).

    Args:
        n_mics: microphones (one right-hand side each).
        taps: ``L`` (filter length per reference channel, samples).
        block_samples: ``N``.
        max_blocks: blocks a segment holds at most (its buffer).
        max_gaps: excluded (double-talk) ranges a segment may have.
        use_kernel: Numba accumulation (``False``: the numpy reference).
        max_delay: largest bulk delay :meth:`redelay` may move the segment to.
        n_refs: reference channels ``R``: the unknowns are ``R L`` taps per mic (ref-major)
            and ``R`` is block Toeplitz, ``R_(i k),(j l) = c_ij(k - l)`` with
            ``c_ij(d) = sum_a x_i(a) x_j(a + d)`` (stereo playback: Benesty, Morgan &
            Sondhi 1998 on its non-uniqueness, which the ridge settles); one channel
            accumulates its statistics per block (the kernel), several compute them by
            FFT correlation when a refit begins.
    """

    def __init__(
        self,
        n_mics: int,
        taps: int,
        block_samples: int,
        max_blocks: int,
        max_gaps: int = 8,
        use_kernel: bool = True,
        max_delay: int = 0,
        n_refs: int = 1,
    ) -> None:
        self.n_mics, self.taps, self.block_samples = n_mics, taps, block_samples
        self.max_blocks, self.max_gaps = max_blocks, max_gaps
        self.max_delay, self.n_refs = max_delay, n_refs
        self._acc = ls_accumulate_kernel if use_kernel else ls_accumulate_reference
        self.buf = np.zeros((n_refs, taps - 1 + max_blocks * block_samples), np.float64)
        """``(R, L - 1 + S_max)``: the delayed reference, ``buf[:, L - 1 + i]`` = sample ``i``."""
        self.t = np.zeros(taps, np.float64)
        """Autocorrelation of the reference (one channel; accumulated per block)."""
        self.r = np.zeros((n_mics, taps), np.float64)
        """``r_mk`` (one channel; accumulated per block)."""
        self.yy = np.zeros(n_mics, np.float64)
        self.gaps = np.zeros((max_gaps, 2), np.int64)
        self.n_gaps = 0
        self.blocks = 0
        self.delay = 0
        """Bulk delay (samples) of the reference in :attr:`buf` (see :meth:`redelay`)."""
        # the segment as it came, for :meth:`redelay`: the undelayed reference with the
        # max_delay + L - 1 samples before the segment, and the mics
        head = max_delay + taps - 1
        self._raw = np.zeros((n_refs, head + max_blocks * block_samples), np.float32)
        self._mic = np.zeros((n_mics, max_blocks * block_samples), np.float32)
        self.solution = np.zeros((n_mics, n_refs * taps), np.float64)
        self._left = 0  # PCG iterations left in the current solve
        self.ready = False
        """A finished solve's :attr:`solution` waits to be taken (cleared by the taker, by
        :meth:`abort`, :meth:`start`, :meth:`redelay` and :meth:`begin`)."""

    def warmup(self) -> None:
        """Compile (or load) the accumulation kernel for the arguments :meth:`push` gives it
        (float32 C-contiguous blocks), on scratch arrays: no state changes. Its first call
        otherwise comes with the first far-end block, inside the real-time loop, where a
        compile holds the GIL for seconds (both capture devices of the daemon overran)."""
        if self._acc is not ls_accumulate_kernel:
            return
        n = self.block_samples
        self._acc(np.zeros(self.taps - 1 + n, np.float64), self.taps - 1,
                  np.zeros(n, np.float32), np.zeros((self.n_mics, n), np.float32), True,
                  np.zeros_like(self.t), np.zeros_like(self.r), np.zeros_like(self.yy))

    def start(self, pre: np.ndarray, delay: int = 0) -> None:
        """A new segment, its reference delayed by ``delay`` samples (``<= max_delay``);
        ``pre (R, m)`` (or ``(m,)`` for one channel): the undelayed reference samples before
        it, the newest last (at least ``delay + L - 1``; the last ``max_delay + L - 1`` are
        kept, zeros before)."""
        lag = self.taps - 1
        head = self.max_delay + lag
        pre = np.atleast_2d(np.asarray(pre, np.float64))
        keep = pre[:, pre.shape[1] - min(head, pre.shape[1]) :] if head else pre[:, :0]
        self._raw[:, :head] = 0.0
        self._raw[:, head - keep.shape[1] : head] = keep
        self.delay = int(delay)
        self.buf[:, :lag] = self._raw[:, head - self.delay - lag : head - self.delay]
        a = self.buf[0, :lag]
        self.t[:] = 0.0
        if lag:
            full = np.correlate(a, a, "full")[lag - 1 :]  # lags 0 .. L-2
            self.t[:lag] = full
        self.r.fill(0.0)
        self.yy.fill(0.0)
        self.n_gaps = 0
        self.blocks = 0
        self.solution.fill(0.0)
        self._left = 0
        self.ready = False

    @property
    def full(self) -> bool:
        """The segment buffer is full."""
        return self.blocks >= self.max_blocks

    def push(
        self, x: np.ndarray, y: np.ndarray, include: bool, x_raw: np.ndarray | None = None
    ) -> bool:
        """Add the reference block ``x (R, N)`` (or ``(N,)``; delayed by :attr:`delay`) and
        mic block ``y (n_mic, N)``; its rows count only if ``include``; ``x_raw``: the same
        block of the undelayed reference (default ``x``: no delay). ``False`` when it could
        not (buffer full, too many gaps)."""
        n = self.block_samples
        if self.full:
            return False
        offset = self.taps - 1 + self.blocks * n
        if not include:
            if self.n_gaps and self.gaps[self.n_gaps - 1, 1] == offset:
                self.gaps[self.n_gaps - 1, 1] = offset + n
            elif self.n_gaps < self.max_gaps:
                self.gaps[self.n_gaps] = (offset, offset + n)
                self.n_gaps += 1
            else:
                return False
        x = x.reshape(self.n_refs, n)
        if self.n_refs == 1:
            self._acc(self.buf[0], offset, x[0], y, include, self.t, self.r, self.yy)
        else:  # the statistics come by FFT when a refit begins (_statistics)
            self.buf[:, offset : offset + n] = x
            if include:
                self.yy += np.sum(np.square(y, dtype=np.float64), axis=1)
        i = self.blocks * n
        head = self.max_delay + self.taps - 1
        self._raw[:, head + i : head + i + n] = x if x_raw is None else x_raw.reshape(x.shape)
        self._mic[:, i : i + n] = y
        self.blocks += 1
        return True

    def redelay(self, delay: int) -> None:
        """Move the segment so far to a new bulk delay (``0 <= delay <= max_delay``): its
        reference buffer and statistics become those a segment fed at ``delay`` from its
        start would hold (from the kept undelayed reference and mics; by FFT correlation,
        ``O(S log S)``), so the next refit fits all the segment's samples at the new delay.
        A solve in progress is dropped. Allocates (a rare event)."""
        if not 0 <= delay <= self.max_delay:
            raise ValueError(f"delay must be in [0, {self.max_delay}], got {delay}")
        self._left = 0
        self.ready = False
        self.delay = int(delay)
        lag, n_rows = self.taps - 1, self.blocks * self.block_samples
        head = self.max_delay + lag
        lo = head - self.delay - lag
        self.buf[:, : lag + n_rows] = self._raw[:, lo : lo + lag + n_rows]
        if self.n_refs == 1:
            c, r, yy = self._statistics()
            self.t[:] = c[0, 0, lag:]
            self.r[:] = r
            self.yy[:] = yy

    def _statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(c (R, R, 2L - 1), r (n_mic, R L), yy (n_mic,))`` of the segment so far by FFT
        correlation: ``c[i, j, L - 1 + d] = c_ij(d)`` over the whole buffer, ``r`` and
        ``yy`` over the included rows."""
        lag, n_rows = self.taps - 1, self.blocks * self.block_samples
        x = self.buf[:, : lag + n_rows]
        y = self._mic[:, :n_rows].astype(np.float64)
        for a, b in self.gaps[: self.n_gaps]:
            y[:, a - lag : b - lag] = 0.0  # excluded rows (gaps are buffer offsets)
        nf = _fast_len(x.shape[1] + self.taps)
        spec = np.fft.rfft(x, nf, axis=-1)  # (R, bins)
        cc = np.fft.irfft(np.conj(spec)[:, None] * spec[None, :], nf, axis=-1)
        c = np.concatenate([cc[..., nf - lag :], cc[..., : lag + 1]], axis=-1)
        # r_mi(k) = sum_n y_m(n) x_i(n - k) = g_mi[L - 1 - k], g_mi[j] = sum_n y_m(n) buf_i[n + j]
        g = np.fft.irfft(np.conj(np.fft.rfft(y, nf, axis=-1))[:, None] * spec[None], nf, axis=-1)
        r = g[..., lag::-1].reshape(self.n_mics, -1)
        return c, r, np.sum(y**2, axis=1)

    @property
    def included_blocks(self) -> int:
        """Blocks whose rows are in the fit."""
        gap = int(np.sum(self.gaps[: self.n_gaps, 1] - self.gaps[: self.n_gaps, 0]))
        return self.blocks - gap // self.block_samples

    def _operator(self, c: np.ndarray) -> tuple:
        """Spectra for ``R v``: (``(R, R, L + 1)`` spectra of the ``2 L`` circulant
        embeddings of ``c_ij``, [(``(R, bins)`` spectra of the samples an excluded row range
        reads, FFT length, rows) per range: the pre- and post-window rows and the gaps])."""
        L = self.taps
        end = L - 1 + self.blocks * self.block_samples
        emb = np.concatenate([c[..., L - 1 :], np.zeros(c.shape[:2] + (1,)), c[..., : L - 1]], -1)
        ranges = [(0, L - 1)]
        ranges += [(int(a), int(b)) for a, b in self.gaps[: self.n_gaps]]
        ranges.append((end, end + L - 1))
        ops = []
        for a, b in ranges:
            if b <= a:
                continue
            lo, hi = a - L + 1, b  # the samples these rows read
            s = np.zeros((self.n_refs, hi - lo))
            s[:, max(0, -lo) : min(hi, end) - lo] = self.buf[:, max(0, lo) : min(hi, end)]
            # the conv's circular wrap lands on its first L - 1 outputs, which are unused
            nf = _fast_len(s.shape[1])
            ops.append((np.fft.rfft(s, nf, axis=-1), nf, b - a))
        return np.fft.rfft(emb, axis=-1), ops

    def _matvec(self, op: tuple, v: np.ndarray) -> np.ndarray:
        """``R v`` for ``v (n_mic, R L)``."""
        L, n_refs = self.taps, self.n_refs
        t_spec, ranges = op
        v = v.reshape(self.n_mics, n_refs, L)
        v_spec = np.fft.rfft(v, 2 * L, axis=-1)
        if n_refs == 1:
            spec = t_spec[0] * v_spec
        else:
            spec = np.einsum("ijk,mjk->mik", t_spec, v_spec)
        out = np.fft.irfft(spec, 2 * L, axis=-1)[..., :L]
        for s_spec, nf, rows in ranges:
            u = np.fft.irfft((s_spec[None] * np.fft.rfft(v, nf, axis=-1)).sum(axis=1), nf)
            u[:, : L - 1] = 0.0  # u = X v on the range's rows only
            u[:, L - 1 + rows :] = 0.0
            back = np.conj(s_spec)[None] * np.fft.rfft(u, axis=-1)[:, None]
            out -= np.fft.irfft(back, nf, axis=-1)[..., :L]
        return out.reshape(self.n_mics, -1)

    def _precondition(self, res: np.ndarray) -> np.ndarray:
        """``z = M^-1 res`` for ``res (n_mic, R L)``, ``M`` T. Chan's block-circulant
        approximation of ``R + lam I`` (per bin an ``R x R`` Hermitian matrix)."""
        L = self.taps
        spec = np.fft.rfft(res.reshape(self.n_mics, self.n_refs, L), axis=-1)
        z = np.einsum("kij,mjk->mik", self._m_inv, spec)
        return np.fft.irfft(z, L, axis=-1).reshape(self.n_mics, -1)

    def begin(self, h0: np.ndarray, reg: float, iterations: int) -> None:
        """Start PCG on ``(R + lam I) h = r`` (``lam = reg`` times the mean reference power
        ``c_ii(0)``) from ``h0 (n_mic, R L)`` on a snapshot of the segment so far (blocks
        pushed meanwhile do not change it); :meth:`iterate` runs it. Allocates (once per
        refit)."""
        L, n_refs = self.taps, self.n_refs
        if n_refs == 1:
            c = np.concatenate([self.t[:0:-1], self.t])[None, None]
            r, yy = self.r, self.yy
        else:
            c, r, yy = self._statistics()
        self._op = self._operator(c)
        self._r_snap = r.copy()
        self._yy_snap = yy.copy()
        lam = reg * float(np.mean(c[np.arange(n_refs), np.arange(n_refs), L - 1])) + 1e-12
        k = np.arange(L)
        # T. Chan's circulant of each block: ((L - k) c(k) + k c(k - L)) / L, k = 0 .. L-1
        ck = c[..., L - 1 :]
        back = np.concatenate([np.zeros(c.shape[:2] + (1,)), c[..., : L - 1]], axis=-1)
        chan = ((L - k) * ck + k * back) / L
        m = np.transpose(np.fft.rfft(chan, axis=-1), (2, 0, 1))  # (bins, R, R), Hermitian
        eig, vec = np.linalg.eigh(0.5 * (m + np.conj(np.transpose(m, (0, 2, 1)))))
        eig = np.maximum(eig, 0.0) + lam
        self._m_inv = np.einsum("kij,kj,klj->kil", vec, 1.0 / eig, np.conj(vec))
        self._lam = lam
        x = h0.copy()
        res = self._r_snap - self._matvec(self._op, x) - lam * x
        z = self._precondition(res)
        self._cg = [x, res, z.copy(), np.sum(res * z, axis=1)]  # x, residual, p, r.z
        self._left = iterations
        self.ready = False

    @property
    def solving(self) -> bool:
        """A solve begun by :meth:`begin` has iterations left."""
        return self._left > 0

    def iterate(self, count: int) -> bool:
        """Up to ``count`` PCG iterations of the current solve; ``True`` when it is done
        (then :attr:`solution` holds it); ``False`` also when no solve is running."""
        if not self._left:
            return False
        lam = self._lam
        x, res, p, rz = self._cg
        for _ in range(min(count, self._left)):
            ap = self._matvec(self._op, p) + lam * p
            alpha = rz / np.maximum(np.sum(p * ap, axis=1), 1e-300)
            x += alpha[:, None] * p
            res -= alpha[:, None] * ap
            z = self._precondition(res)
            rz_new = np.sum(res * z, axis=1)
            p = z + (rz_new / np.maximum(rz, 1e-300))[:, None] * p
            rz = rz_new
            self._left -= 1
        self._cg = [x, res, p, rz]
        if self._left:
            return False
        self.solution[...] = x
        self.ready = True
        return True

    def abort(self) -> None:
        """Drop a solve in progress and a finished one not yet taken."""
        self._left = 0
        self.ready = False

    def solve(self, h0: np.ndarray, reg: float, iterations: int) -> np.ndarray:
        """:meth:`begin` and all its iterations; returns :attr:`solution`."""
        self.begin(h0, reg, iterations)
        self.iterate(iterations)
        return self.solution

    def accept(
        self, h: np.ndarray, h_now: np.ndarray, min_rows: float, max_residual_db: float
    ) -> np.ndarray:
        """``(n_mic,)`` bool: take the LS filter ``h`` instead of ``h_now`` (both
        ``(n_mic, R L)``): the segment holds at least ``min_rows R L`` included samples, the
        LS residual is at most ``max_residual_db`` of the mic energy (echo alone: the
        linear model explains the mic; near-end speech the double-talk detector missed
        leaves a large residual, and such a fit is refused), and it is below ``h_now``'s."""
        c = self.cost(h)
        ok = c < self.cost(h_now)
        ok &= c <= 10.0 ** (max_residual_db / 10.0) * self._yy_snap
        ok &= self.included_blocks * self.block_samples >= min_rows * self.taps * self.n_refs
        return ok

    def cost(self, h: np.ndarray) -> np.ndarray:
        """``(n_mic,)`` squared error of the filters ``h (n_mic, R L)`` over the included
        samples of the last solve's snapshot (``yy - 2 h.r + h.R h``)."""
        return (
            self._yy_snap
            - 2.0 * np.sum(h * self._r_snap, axis=1)
            + np.sum(h * self._matvec(self._op, h), axis=1)
        )
