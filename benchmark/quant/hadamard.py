"""Orthonormal Hadamard rotations, built and applied without a dense n x n matrix.

A Hadamard matrix of order n exists only for n = 1, 2 or a multiple of 4. We build every
order ``K * 2^m`` whose odd-looking part K comes from Paley's constructions with a prime q:

- Sylvester: H_1 = [1], H_2n = [[H, H], [H, -H]]  (orders 2^m);
- Paley I, q = 3 (mod 4): order q + 1  (12, 20, 24, 32, 44, 48, ...);
- Paley II, q = 1 (mod 4): order 2(q + 1)  (28, 36, 60, ...).

1152 = 36 * 32 and 4608 = 36 * 128, so PixArt-Sigma's widths are H_36 (x) H_2^m. The
rotation is kept as a Kronecker product of small normalised factors (H_K and Sylvester
factors of at most 128) and applied one factor at a time, which costs n * sum(factors)
multiply-adds per token instead of n^2.
"""

from __future__ import annotations

import functools
import math

import torch

from benchmark.errors import UserError

__all__ = ["HadamardRotation", "apply_factors", "hadamard_matrix", "hadamard_order_factor"]

_SYLVESTER_FACTOR = 128  # largest power-of-two factor applied as one small matmul


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = Legendre symbol of (j - i) mod q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if r in squares else -1.0 for r in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(q: int) -> torch.Tensor:
    n = q + 1
    s = torch.zeros(n, n, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = _jacobsthal(q)
    return s + torch.eye(n, dtype=torch.float64)  # S skew with S S^T = q I


def _paley2(q: int) -> torch.Tensor:
    n = q + 1
    c = torch.zeros(n, n, dtype=torch.float64)
    c[0, 1:] = 1.0
    c[1:, 0] = 1.0
    c[1:, 1:] = _jacobsthal(q)  # symmetric conference matrix
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(n, dtype=torch.float64), b)


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _paley_base(k: int) -> torch.Tensor | None:
    """An unnormalised Hadamard matrix of order k from one Paley construction, if any."""
    if k % 4:
        return None
    if _is_prime(k - 1) and (k - 1) % 4 == 3:
        return _paley1(k - 1)
    if _is_prime(k // 2 - 1) and (k // 2 - 1) % 4 == 1:
        return _paley2(k // 2 - 1)
    return None


def hadamard_order_factor(n: int) -> tuple[int, int]:
    """Split n = K * 2^m with H_K from Paley (or K = 1), the smallest such K.

    Raises ValueError when this module cannot build a Hadamard matrix of order n.
    """
    if n < 1:
        raise UserError(f"Hadamard order must be positive, got {n}")
    power = n & -n
    while power >= 1:
        k = n // power
        if k == 1 or _paley_base(k) is not None:
            return k, power
        power //= 2
    why = "none exists (orders are 1, 2 or multiples of 4)" if n > 2 and n % 4 else (
        "no K * 2^m split with a Paley factor K of a prime q")
    raise UserError(f"no Hadamard matrix of order {n} can be built: {why}; "
                     "use the block-diagonal form with a block size that divides it")


@functools.cache
def _factors(n: int) -> tuple[torch.Tensor, ...]:
    """Normalised float64 Kronecker factors whose product is the order-n Hadamard matrix."""
    k, power = hadamard_order_factor(n)
    factors = []
    if k > 1:
        factors.append(_paley_base(k))
    while power > 1:
        size = min(power, _SYLVESTER_FACTOR)
        factors.append(_sylvester(size))
        power //= size
    for f in factors:  # cheap at these sizes, and a wrong construction must never pass silently
        gram = f @ f.T
        assert torch.equal(gram, f.shape[0] * torch.eye(f.shape[0], dtype=torch.float64)), f.shape
    return tuple(f / math.sqrt(f.shape[0]) for f in factors) or (torch.ones(1, 1, dtype=torch.float64),)


def hadamard_matrix(n: int) -> torch.Tensor:
    """The dense normalised Hadamard matrix of order n (float64); for tests and small n."""
    out = torch.ones(1, 1, dtype=torch.float64)
    for f in _factors(n):
        out = torch.kron(out, f)
    return out


def apply_factors(x: torch.Tensor, factors, signs: torch.Tensor | None, block: int, *,
                  inplace: bool = False, spare: torch.Tensor | None = None) -> torch.Tensor:
    """x -> (I (x) H_block) D x on the last dimension, H_block the Kronecker product of
    ``factors`` (in x's dtype and device); a plain function, so torch.compile can trace it.

    ``inplace``: x is the caller's own contiguous buffer. The factors then alternate between
    it and one spare buffer (``spare`` when given, of x's size, else a new one; the same BLAS
    calls, so the same bits) instead of allocating a new tensor per factor; the result is
    whichever of the two holds it, so use the return value."""
    shape = x.shape
    if signs is not None:
        x = x.mul_(signs) if inplace else x * signs
    if inplace:
        return _apply_factors_inplace(x.view(-1, block), factors, block, spare).view(shape)
    # (N, block): one row per block of every token; factor i acts on its own axis.
    x = x.reshape(-1, block)
    for f, k, after in _axes(factors, block):
        x = x @ f.T if after == 1 else torch.matmul(f, x.reshape(-1, k, after))
    return x.reshape(shape)


def _axes(factors, block: int) -> list[tuple[torch.Tensor, int, int]]:
    """(factor, its size k, the size of the axes after its own) for each factor of a block
    viewed as (k_1, ..., k_n); ``after`` is 1 for the last axis."""
    axes, done = [], 1
    for f in factors:
        k = f.shape[0]
        axes.append((f, k, block // (done * k)))
        done *= k
    return axes


def _apply_factors_inplace(x: torch.Tensor, factors, block: int, spare: torch.Tensor | None) -> torch.Tensor:
    # The calls torch.matmul makes above (an mm for the last axis, a bmm with the factor
    # broadcast over the batch for the others), with explicit outputs.
    spare = torch.empty_like(x) if spare is None else spare.view(x.shape)
    for f, k, after in _axes(factors, block):
        if after == 1:
            torch.mm(x.view(-1, k), f.T, out=spare.view(-1, k))
        else:
            src = x.view(-1, k, after)
            torch.bmm(f.expand(src.shape[0], k, k), src, out=spare.view(-1, k, after))
        x, spare = spare, x
    return x


class HadamardRotation(torch.nn.Module):
    """x -> R x on the last dimension, R = H D orthonormal (D: optional random signs).

    ``block_size=None`` rotates all ``size`` channels with one Hadamard matrix; an integer
    gives the block-diagonal I (x) H_block, which mixes channels only within each block.
    """

    def __init__(self, size: int, block_size: int | None = None, random_signs: bool = False,
                 seed: int = 0):
        super().__init__()
        block = size if block_size is None else int(block_size)
        if block < 1 or size % block:
            raise UserError(f"Hadamard block size {block_size} does not divide the size {size}")
        self.size, self.block = size, block
        factors = _factors(block)
        self.factor_sizes = [f.shape[0] for f in factors]
        for i, f in enumerate(factors):  # float64 masters: folding into weights stays exact
            self.register_buffer(f"factor{i}", f.clone(), persistent=False)
        signs = None
        if random_signs:
            gen = torch.Generator().manual_seed(seed)
            signs = torch.randint(0, 2, (size,), generator=gen).to(torch.float64) * 2 - 1
        self.register_buffer("signs", signs, persistent=False)
        self._cast: dict = {}

    def _cast_like(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        key = (x.dtype, x.device)
        if key not in self._cast:
            factors = [getattr(self, f"factor{i}").to(dtype=x.dtype, device=x.device)
                       for i in range(len(self.factor_sizes))]
            signs = None if self.signs is None else self.signs.to(dtype=x.dtype, device=x.device)
            self._cast[key] = (factors, signs)
        return self._cast[key]

    def _apply(self, fn, recurse=True):
        self._cast = {}  # .to() / .cuda() move the masters; drop the cached casts
        return super()._apply(fn, recurse)

    def check_width(self, channels: int) -> None:
        """Raise ValueError unless this rotation is ``channels`` wide."""
        if channels != self.size:
            raise UserError(f"rotation of size {self.size} applied to {channels} channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_width(x.shape[-1])
        factors, signs = self._cast_like(x)
        return apply_factors(x, factors, signs, self.block)

    def matrix(self) -> torch.Tensor:
        """Dense R (float64), for tests."""
        return self(torch.eye(self.size, dtype=torch.float64)).T

    def describe(self) -> dict:
        return {"size": self.size, "block": self.block, "factors": self.factor_sizes,
                "random_signs": self.signs is not None}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items())
