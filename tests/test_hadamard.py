import pytest
import torch

from benchmark.quant.hadamard import HadamardRotation, hadamard_matrix, hadamard_order_factor


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 64, 96, 128, 1152, 4608])
def test_orthonormal(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    # a Hadamard matrix: every entry is +-1/sqrt(n)
    assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5))


def test_pixart_sizes_use_h36():
    assert hadamard_order_factor(1152) == (36, 32)
    assert hadamard_order_factor(4608) == (36, 128)
    assert hadamard_order_factor(12) == (12, 1)


@pytest.mark.parametrize("n", [3, 6, 9, 18, 90])
def test_impossible_orders_raise(n):
    with pytest.raises(ValueError, match=f"no Hadamard matrix of order {n}"):
        HadamardRotation(n)


def test_fast_apply_matches_dense():
    x = torch.randn(3, 7, 1152, dtype=torch.float64)
    rot = HadamardRotation(1152)
    assert torch.allclose(rot(x), x @ hadamard_matrix(1152).T, atol=1e-10)


@pytest.mark.parametrize("n, block", [(1152, 128), (256, 64), (90, 2)])
def test_block_diagonal(n, block):
    rot = HadamardRotation(n, block_size=block)
    r = rot.matrix()
    assert torch.allclose(r @ r.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    expected = torch.block_diag(*[hadamard_matrix(block)] * (n // block))
    assert torch.allclose(r, expected, atol=1e-12)


def test_block_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        HadamardRotation(1152, block_size=100)


def test_random_signs():
    a, b, c = (HadamardRotation(64, random_signs=True, seed=s).matrix() for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a @ a.T, torch.eye(64, dtype=torch.float64), atol=1e-12)
    d = torch.linalg.solve(hadamard_matrix(64), a)  # R = H D with D diagonal +-1
    assert torch.allclose(d, torch.diag(torch.diagonal(d)), atol=1e-10)
    assert torch.allclose(torch.diagonal(d).abs(), torch.ones(64, dtype=torch.float64))


def test_wrong_width_raises():
    with pytest.raises(ValueError, match="size 64"):
        HadamardRotation(64)(torch.randn(2, 32))


def test_dtypes():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(4, 1152).to(dtype)
        y = HadamardRotation(1152)(x)
        assert y.dtype == dtype
        ref = x.double() @ hadamard_matrix(1152).T
        assert (y.double() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("size,block,count", [(16, None, 1), (192, None, 2), (3072, None, 3),
                                              (1152, 384, 2), (768, 64, 1)])
def test_inplace_apply_is_the_same_bits(size, block, count):
    """The online path's in-place form (explicit mm/bmm outputs, two buffers) makes the calls
    torch.matmul makes: one, two and three factors (3072 = 12 x 128 x 2)."""
    from benchmark.quant.hadamard import apply_factors

    rotation = HadamardRotation(size, block, random_signs=True)
    factors, signs = rotation._cast_like(torch.empty(0))
    x = torch.randn(3, 5, size, generator=torch.Generator().manual_seed(size)) * 4
    want = apply_factors(x, factors, signs, rotation.block)
    mine = x.clone()
    got = apply_factors(mine, factors, signs, rotation.block, inplace=True)
    assert len(factors) == count
    assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
