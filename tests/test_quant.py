import pytest
import torch

from benchmark.quant.grid import GRIDS, Precision, quantize_activation, quantize_weight


@pytest.mark.parametrize("name, w, a", [("w4a4", 4, 4), ("w6a6", 6, 6), ("W8A8", 8, 8),
                                        ("w4a8", 4, 8), ("w2a3", 2, 3), ("a4", None, 4),
                                        ("a6", None, 6), ("w4", 4, None)])
def test_precision_parse(name, w, a):
    p = Precision.parse(name)
    assert (p.weight_bits, p.activation_bits) == (w, a)
    assert Precision.parse(p.name) == p


def test_precision_one_side_names():
    assert Precision.parse("a4").name == "a4" and Precision.parse("w4").name == "w4"
    assert Precision(None, 4, weight_block=64).name == "a4"  # no weight grid to name


def test_precision_fp():
    p = Precision.parse("fp")
    assert p.weight_bits is None and p.activation_bits is None and p.name == "fp"


@pytest.mark.parametrize("bad", ["a0", "w0", "a1", "w1a4", "w4a9", "w16a16", "int4", "", "w4a4x",
                                 "a4w4", "wa4", "a"])
def test_precision_rejects(bad):
    with pytest.raises(ValueError, match="unknown precision"):
        Precision.parse(bad)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_activation_error_at_most_half_step(bits, grid):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(16, 50, 96, generator=gen) * torch.rand(96, generator=gen) * 10 + 3
    x[:4] += 40  # tokens that do not straddle 0
    q = quantize_activation(x, bits, grid)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    if grid == "zero_point":
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    step = (hi - lo) / (2**bits - 1)
    assert q.dtype == x.dtype and q.shape == x.shape
    # half a step, plus the fp32 roundings of (x - lo) / step and q * step + lo: a few ulps of
    # the row's magnitude (up to 1.2 eps beyond half a step over 300 random draws)
    ulps = 2 * torch.finfo(x.dtype).eps * torch.maximum(lo.abs(), hi.abs())
    assert ((q - x).abs() <= step / 2 + ulps).all()
    if grid == "min_anchored":  # per token: the token's own min and max are on its grid
        assert torch.allclose(q.amin(-1), x.amin(-1)) and torch.allclose(q.amax(-1), x.amax(-1))
    else:  # an integer grid through 0: every value a whole number of steps
        k = q / step
        assert (k - k.round()).abs().max() < 1e-3
    # at most 2^bits distinct values per token
    assert max(len(torch.unique(row)) for row in q.reshape(-1, 96)) <= 2**bits


def test_zero_point_grid_keeps_zero_and_differs_from_min_anchored():
    x = torch.randn(64, 96) * 3 + 0.5
    x[:, 7] = 0.0
    q = quantize_activation(x, 4, "zero_point")
    assert torch.equal(q[:, 7], torch.zeros(64))  # 0 is on the grid
    assert not torch.equal(q, quantize_activation(x, 4, "min_anchored"))
    assert (quantize_activation(x, 4, "min_anchored")[:, 7] != 0).any()  # not on that grid


def test_zero_point_grid_by_hand():
    # min -1, max 2 at 2 bits: step 1, zero 1; 0.4 -> 0, 0.6 -> 1, 1.5 -> 2 (half to even)
    x = torch.tensor([[-1.0, 2.0, 0.4, 0.6, 1.5, -0.5]])
    assert torch.equal(quantize_activation(x, 2, "zero_point"),
                       torch.tensor([[-1.0, 2.0, 0.0, 1.0, 2.0, -0.0]]))
    # all positive: the range widens to [0, 3], step 1
    y = torch.tensor([[1.0, 3.0, 2.4]])
    assert torch.equal(quantize_activation(y, 2, "zero_point"), torch.tensor([[1.0, 3.0, 2.0]]))
    assert torch.allclose(quantize_activation(y, 2, "min_anchored"), torch.tensor([[1.0, 3.0, 7 / 3]]))


def test_unknown_grid():
    with pytest.raises(ValueError, match="unknown grid"):
        quantize_activation(torch.randn(2, 8), 4, "nearest")
    with pytest.raises(ValueError, match="unknown grid"):
        Precision(4, 4, grid="nearest")


def test_precision_grid_name():
    assert Precision(4, 4).grid == "zero_point" and Precision(4, 4).name == "w4a4"
    assert Precision(4, 4, grid="min_anchored").name == "w4a4-minanchored"


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_values_on_the_grid_survive(bits, grid):
    step = 0.5
    levels = torch.randint(0, 2**bits, (8, 64)).float()
    levels[:, 0], levels[:, 1] = 0, 2**bits - 1  # the grid's ends fix min and max
    # min-anchored: lo + k * step; zero point: (k - zero) * step with an integer zero
    x = -1.25 + levels * step if grid == "min_anchored" else (levels - 3) * step
    assert torch.equal(quantize_activation(x, bits, grid), x)
    q = quantize_activation(torch.randn(8, 64), bits, grid)
    assert torch.allclose(quantize_activation(q, bits, grid), q, atol=1e-6)  # idempotent


@pytest.mark.parametrize("grid", GRIDS)
def test_constant_and_zero_tokens_are_exact(grid):
    x = torch.full((3, 5, 32), 0.7)
    x[1] = 0.0
    x[2, :, :] = -123.456
    x[0, 1, :] = 1 / 3
    assert torch.equal(quantize_activation(x, 4, grid), x)
    assert torch.equal(quantize_weight(torch.zeros(4, 300), 4, grid=grid), torch.zeros(4, 300))
    w = torch.full((4, 256), 0.1)
    assert torch.equal(quantize_weight(w, 4, grid=grid), w)


def test_nan_raises():
    x = torch.randn(2, 8)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_activation(x, 4)
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(x, 4)
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(x, 4, symmetric=True)


def test_bits_out_of_range():
    with pytest.raises(ValueError, match="bits"):
        quantize_activation(torch.randn(3, 4), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_preserved(dtype):
    x = torch.randn(4, 64).to(dtype)
    assert quantize_activation(x, 4).dtype == dtype
    assert quantize_weight(x, 4).dtype == dtype


def test_weight_blocks_are_independent():
    w = torch.randn(6, 256)
    w[:, 128:] *= 100  # the second block's range must not leak into the first
    q = quantize_weight(w, 4, block_size=128)
    first = quantize_weight(w[:, :128], 4, block_size=128)
    assert torch.equal(q[:, :128], first)
    step = (w[:, :128].amax(1) - w[:, :128].amin(1)) / 15
    assert ((q[:, :128] - w[:, :128]).abs() <= step[:, None] / 2 + 1e-6).all()


def test_weight_dimension_not_a_multiple_of_the_block():
    w = torch.randn(5, 300)  # blocks of 128, 128, 44
    q = quantize_weight(w, 4)
    assert q.shape == w.shape
    assert torch.equal(q[:, 256:], quantize_weight(w[:, 256:], 4, block_size=128))
    for lo, hi in [(0, 128), (128, 256), (256, 300)]:
        block = w[:, lo:hi]
        step = (block.amax(1) - block.amin(1)) / 15
        assert ((q[:, lo:hi] - block).abs() <= step[:, None] / 2 + 1e-6).all()


def test_symmetric_weights():
    w = torch.randn(4, 128)
    q = quantize_weight(w, 4, symmetric=True)
    step = w.abs().amax(1, keepdim=True) / 7
    assert ((q / step).round() - q / step).abs().max() < 1e-4  # multiples of the step
    assert ((q - w).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(quantize_weight(-w, 4, symmetric=True), -q)  # symmetric grid
