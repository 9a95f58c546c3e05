"""The fused transform-and-quantize kernels, run by Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton compiles a kernel (``@triton.jit`` reads it), so
it is set here, before ``benchmark.quant.kernels`` imports its kernel module. Few tokens: the
interpreter runs every program in Python.
"""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import benchmark  # noqa: E402,F401
from benchmark import HadamardRotation, TransformedLinear  # noqa: E402
from benchmark.quant.grid import Precision, fake_quantize  # noqa: E402
from benchmark.quant.kernels import (  # noqa: E402
    Workspace,
    compare_outputs,
    fused_supported,
    fused_transform_quantize,
    interpreting,
    resolve_kernel,
    torch_transform_quantize,
    triton_available,
)
from benchmark.quant.kernels.plan import plan_layout  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
needs_interpreter = pytest.mark.skipif(
    not interpreting(), reason="TRITON_INTERPRET is off in this process: the kernels need it on CPU")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BITS = [2, 3, 4, 5, 6, 7, 8, None]
# (channels, rotation block (None: full, 0: no rotation), random signs, center, scale)
CASES = {
    "64-full": (64, None, False, True, True),
    "128-full-signs": (128, None, True, False, False),
    "1152-full": (1152, None, False, True, True),         # H_36 (x) H_32
    "4608-full-signs": (4608, None, True, True, True),    # H_36 (x) H_128
    "1152-block128": (1152, 128, False, True, True),
    "4608-block128-signs": (4608, 128, True, False, True),
    "1152-none": (1152, 0, False, True, True),            # SmoothQuant / Dyn. Center: no rotation
    "4608-quant-only": (4608, 0, False, False, False),
}


def make_inputs(channels, dtype, center, scale, samples=2, tokens=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Channel means and outlier channels, like real activations.
    x = (torch.randn(samples, tokens, channels, generator=gen)
         * (0.1 + 4 * torch.rand(channels, generator=gen) ** 4)
         + 2 * torch.randn(channels, generator=gen)).to(dtype)
    mu = x.mean(dim=-2, keepdim=True) if center else None
    inv_scale = (0.25 + torch.rand(channels, generator=gen)).to(dtype) if scale else None
    return x, mu, inv_scale


def make_rotation(channels, block, signs):
    return None if block == 0 else HadamardRotation(channels, block, signs, seed=3)


def run_poisoned(x, *args, **kwargs):
    out = torch.full_like(x, float("nan"))  # any element the kernel fails to write stays NaN
    result = fused_transform_quantize(x, *args, out=out, **kwargs)
    assert result is out
    return out


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_reference(case, dtype):
    channels, block, signs, center, scale = CASES[case]
    x, mu, inv_scale = make_inputs(channels, dtype, center, scale)
    rotation = make_rotation(channels, block, signs)
    for bits in BITS:
        out = run_poisoned(x, mu, inv_scale, rotation, bits)
        ref = torch_transform_quantize(x, mu, inv_scale, rotation, bits, compute_dtype=torch.float32)
        report = compare_outputs(out, ref, bits)
        assert report.ok(), f"bits={bits}: {report}"
        if dtype == torch.float32:  # fp32 in: the native torch path is the reference itself
            native = torch_transform_quantize(x, mu, inv_scale, rotation, bits, compute_dtype=None)
            assert compare_outputs(out, native, bits).ok()


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["1152-full", "4608-block128-signs", "1152-none"])
def test_min_anchored_grid_matches_torch_reference(case, dtype):
    channels, block, signs, center, scale = CASES[case]
    x, mu, inv_scale = make_inputs(channels, dtype, center, scale)
    x[0, 0] = torch.rand(channels).to(dtype) + 1  # a token that does not straddle 0
    rotation = make_rotation(channels, block, signs) if block != 0 else None
    for bits in (2, 4, 8):
        for grid in ("min_anchored", "zero_point"):
            out = run_poisoned(x, mu, inv_scale, rotation, bits, grid=grid)
            ref = torch_transform_quantize(x, mu, inv_scale, rotation, bits, grid=grid)
            report = compare_outputs(out, ref, bits)
            assert report.ok(), f"bits={bits} grid={grid}: {report}"
        assert not torch.equal(run_poisoned(x, mu, inv_scale, rotation, bits, grid="min_anchored"), out)


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("precision", ["tf32x3", "ieee"])
def test_other_dot_precisions(precision):
    # The default "split3" runs in every other test; the interpreter computes the dots in
    # fp32 whatever the precision, so this checks the plumbing, not tf32's rounding.
    x, mu, inv_scale = make_inputs(1152, torch.bfloat16, True, True)
    rotation = HadamardRotation(1152, random_signs=True)
    out = run_poisoned(x, mu, inv_scale, rotation, 4, precision=precision)
    ref = torch_transform_quantize(x, mu, inv_scale, rotation, 4, compute_dtype=torch.float32)
    assert compare_outputs(out, ref, 4).ok()
    with pytest.raises(ValueError, match="precision"):
        fused_transform_quantize(x, mu, inv_scale, rotation, 4, precision="tf32")


@needs_triton
@needs_interpreter
def test_several_rows_per_program_and_a_ragged_tail():
    x, mu, inv_scale = make_inputs(1152, torch.float32, True, True, samples=3, tokens=5)
    rotation = HadamardRotation(1152)
    ref = torch_transform_quantize(x, mu, inv_scale, rotation, 4)
    for rows_per_prog in (1, 4, 16):  # 15 rows: 4 leaves a partial last program, 16 one program
        out = run_poisoned(x, mu, inv_scale, rotation, 4, rows_per_prog=rows_per_prog)
        assert compare_outputs(out, ref, 4).ok()


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("grid", ["zero_point", "min_anchored"])
def test_constant_row_nan_row_and_shapes(grid):
    x, _, _ = make_inputs(128, torch.float32, False, False, samples=1, tokens=4)
    x[0, 1] = 1 / 3                    # constant token: reproduced exactly
    x[0, 2, 7] = float("nan")          # a NaN token: the whole token must come out NaN
    out = run_poisoned(x, None, None, None, 4, grid=grid)
    assert torch.equal(out[0, 1], x[0, 1])
    assert torch.isnan(out[0, 2]).all()
    ok = [0, 3]
    assert compare_outputs(out[:, ok], torch_transform_quantize(x[:, ok], bits=4, grid=grid), 4).ok()
    # 2-D input (one sample), a (C,) mean, and a non-contiguous input.
    x2 = torch.randn(6, 256, dtype=torch.float64)[:, ::2].float()
    rot = HadamardRotation(128, random_signs=True)
    mu = x2.mean(dim=0)
    got = fused_transform_quantize(x2, mu, None, rot, 3)
    assert compare_outputs(got, torch_transform_quantize(x2, mu, None, rot, 3), 3).ok()
    assert fused_transform_quantize(x2[:0], None, None, rot, 3).shape == (0, 128)


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_elementwise_path_is_bit_exact(dtype):
    # (x - mu) * s in fp32, one rounding to nearest even: exactly torch's fp32 path cast back.
    # Catches a truncating conversion, which the one-ulp tolerance of compare_outputs allows.
    x, mu, inv_scale = make_inputs(1152, dtype, True, True, tokens=4)
    out = run_poisoned(x, mu, inv_scale, None, None)
    assert torch.equal(out, torch_transform_quantize(x, mu, inv_scale, None, None,
                                                     compute_dtype=torch.float32))


def _hadanorm_group(channels=1152):
    torch.manual_seed(0)
    lin = torch.nn.Linear(channels, 64)
    scale = torch.rand(channels) + 0.5
    return TransformedLinear([lin], Precision(4, 4), center=True, scale=scale,
                             rotation=HadamardRotation(channels, random_signs=True))


def test_reference_is_the_transformed_linear_path():
    """torch_transform_quantize is TransformedLinear's torch path, step for step."""
    group = _hadanorm_group()
    assert group.kernel == "torch"  # "auto" on the CPU
    x = torch.randn(2, 5, 1152)
    mu = x.mean(dim=-2, keepdim=True)
    got = torch_transform_quantize(x, mu, group.inv_scale, group.rotation, 4)
    assert torch.equal(got, group.online(x, mu, 4))


def test_the_kernel_follows_the_module_to_the_inputs_device(monkeypatch):
    """"auto" is resolved for the weights' device when the group is built, and again for the
    input's once the module has moved (quantized on the CPU, then ``model.to("cuda")``: the
    fused kernel there, not the CPU's choice). The meta device stands in for the GPU."""
    import benchmark.transform.base as transform

    asked = []
    real = transform.resolve_kernel
    monkeypatch.setattr(transform, "resolve_kernel", lambda kernel, device, *fmt:
                        asked.append((kernel, torch.device(device).type)) or real(kernel, device, *fmt))
    group = TransformedLinear([torch.nn.Linear(12, 4)], Precision(None, None), center=False, scale=None,
                              rotation=None)
    group.online(torch.randn(2, 3, 12), None, None)
    assert asked == [("auto", "cpu")]  # resolved once, at build
    group.to("meta").online(torch.empty(2, 3, 12, device="meta"), None, None)
    assert asked == [("auto", "cpu"), ("auto", "meta")] and group.kernel_device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("center,scale,block,bits", [(True, True, 192, 4), (False, False, 64, 6),
                                                     (False, True, 0, 4), (True, False, 12, None)])
def test_the_workspace_gives_the_same_bits_and_reuses_its_buffers(dtype, center, scale, block, bits):
    """The torch path in a workspace makes the same calls into reused buffers (no page faults
    of fresh ones): the same bits. Its result lives until the workspace's next use."""
    x, mu, inv_scale = make_inputs(192, dtype, center, scale, samples=3, tokens=5)
    rotation = make_rotation(192, block, signs=True)
    want = torch_transform_quantize(x, mu, inv_scale, rotation, bits)
    workspace = Workspace()
    got = torch_transform_quantize(x, mu, inv_scale, rotation, bits, workspace=workspace)
    assert torch.equal(got, want)
    if dtype == torch.float32 and (center or scale):  # the result is one of the buffers
        again = torch_transform_quantize(x[:2], None if mu is None else mu[:2], inv_scale, rotation, bits,
                                         workspace=workspace)
        assert again.data_ptr() == got.data_ptr() and torch.equal(again, want[:2])
        assert torch.equal(torch_transform_quantize(x, mu, inv_scale, rotation, bits, workspace=workspace), want)
        import threading  # another thread gets buffers of its own

        elsewhere = []
        thread = threading.Thread(target=lambda: elsewhere.append(workspace.pair(x)[0].data_ptr()))
        thread.start()
        thread.join()
        assert elsewhere[0] not in {buffer.data_ptr() for buffer in workspace.pair(x)}


def test_a_group_transforms_in_the_shared_workspace_until_restored():
    """TransformedLinear.forward computes its input's transform in the shared workspace (its
    matmul consumes it at once), except while autograd records (then no step is in place);
    restoring a quantization frees the buffers."""
    from benchmark import calibrate, quantize_
    from benchmark.transform.base import WORKSPACE

    WORKSPACE.clear()  # an earlier test's quantize_linear (never restored) may have grown it
    model = torch.nn.Sequential(torch.nn.Linear(192, 32), torch.nn.Linear(32, 8))
    x = torch.randn(2, 7, 192)
    with torch.no_grad():
        want = model(x)
        stats = calibrate(model, lambda: model(x))
        with quantize_(model, "hadanorm", "fp", calibration=stats):
            got = model(x)
            assert WORKSPACE._held and all(h[0].numel() == x.numel() for h in WORKSPACE._held.values())
        assert not WORKSPACE._held
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    with quantize_(model, "hadanorm", "w4a4", calibration=stats):
        recorded = model(x.clone().requires_grad_())
        assert recorded.grad_fn is not None and not WORKSPACE._held
        with torch.no_grad():
            assert torch.equal(recorded, model(x))


def test_torch_path_computes_in_float32():
    # bf16 in: centre, scale, rotate and quantize in fp32, one rounding at the end (issue 11)
    x, mu, inv_scale = make_inputs(192, torch.bfloat16, True, True, tokens=16)
    rotation = HadamardRotation(192, random_signs=True)
    got = torch_transform_quantize(x, mu, inv_scale, rotation, 6)
    want = torch_transform_quantize(x.float(), mu.float(), inv_scale.float(), rotation, 6)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())
    native = torch_transform_quantize(x, mu, inv_scale, rotation, 6, compute_dtype=None)
    assert not torch.equal(native, got)  # the earlier bf16-throughout path differs


compiler = pytest.mark.skipif(not __import__("shutil").which("c++"),
                              reason="torch.compile on the CPU needs a C++ compiler")


@pytest.mark.slow  # end to end
@compiler
def test_compiled_kernel_is_the_torch_path_bit_for_bit():
    """``--kernel compile``: one shape, both grids, fp32 (bit-identical) and bf16 (the same
    fp32 computation, one rounding: within compare_outputs' tolerance)."""
    from benchmark.quant.kernels.compiled import compiled_transform_quantize

    rotation = HadamardRotation(192, random_signs=True)  # H12 (x) H16, the embedded width
    for dtype in (torch.float32, torch.bfloat16):
        x, mu, inv_scale = make_inputs(192, dtype, True, True, tokens=8)
        for grid in ("zero_point", "min_anchored"):
            got = compiled_transform_quantize(x, mu, inv_scale, rotation, 4, grid=grid)
            want = torch_transform_quantize(x, mu, inv_scale, rotation, 4, grid=grid)
            if dtype == torch.float32:
                assert torch.equal(got, want), grid
            else:
                assert got.dtype == dtype and compare_outputs(got, want, 4).ok()


@compiler
def test_transformed_linear_on_the_compiled_kernel():
    group = _hadanorm_group(192)
    x = torch.randn(2, 7, 192) + 3 * torch.randn(192)
    want = group(x)[0]
    assert group.use_kernel("compile").describe()["kernel"] == "compile"
    assert torch.equal(group(x)[0], want)


_COMPILED_MATCHES_EAGER = """
import torch
from benchmark.quant.hadamard import HadamardRotation
from benchmark.quant.kernels import torch_transform_quantize
from benchmark.quant.kernels.compiled import compiled_transform_quantize
x = torch.randn(4, 8, 192, generator=torch.Generator().manual_seed(0)) + 3
mu, rotation = x.mean(-2, keepdim=True), HadamardRotation(192, random_signs=True)
print(all(torch.equal(compiled_transform_quantize(x, mu, None, rotation, 4, grid=grid),
                      torch_transform_quantize(x, mu, None, rotation, 4, grid=grid))
          for grid in ("zero_point", "min_anchored")))
"""


@pytest.mark.slow  # end to end
@compiler
def test_compiled_kernel_cache_is_kept_apart_per_vector_width(tmp_path):
    """Pinned numerics (AVX2, 8 lanes) and a native AVX-512 process (16 lanes) share inductor's
    graph cache. Before ``pin_vector_width`` the second reloaded the first's 8-lane loops: its
    outputs were wrong (and larger shapes corrupted the heap)."""
    from torch._inductor import cpu_vec_isa

    if max((isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()), default=0) <= 256:
        pytest.skip("needs a CPU with vectors wider than AVX2's")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for capability in ("avx2", None):  # the pinned process first, then the native one
        env.pop("ATEN_CPU_CAPABILITY", None)
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        run = subprocess.run([sys.executable, "-c", _COMPILED_MATCHES_EAGER], env=env,
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
        assert run.returncode == 0 and run.stdout.split()[-1] == "True", (capability, run.stderr[-500:])


def test_compile_kernel_needs_a_compiler(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match="cannot run on cpu.*C\\+\\+ compiler"):
        resolve_kernel("compile", "cpu")


def test_kernel_choice():
    assert resolve_kernel("torch", "cpu") == "torch"
    assert resolve_kernel("auto", "cpu") == "torch"  # the fused path is for CUDA
    with pytest.raises(ValueError, match="unknown kernel"):
        resolve_kernel("cuda", "cpu")
    if not (triton_available() and interpreting()):
        with pytest.raises(ValueError, match="cannot run on cpu"):
            resolve_kernel("triton", "cpu")


@needs_triton
@needs_interpreter
def test_transformed_linear_on_the_fused_kernel_matches_the_torch_path():
    group = _hadanorm_group(256)
    x = torch.randn(2, 7, 256) + 3 * torch.randn(256)  # channel means that centering removes
    want = group(x)[0]
    assert group.use_kernel("triton").describe()["kernel"] == "triton"
    got = group(x)[0]
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("channels, block", [(64, None), (128, None), (1152, None), (4608, None),
                                             (4608, 128), (1152, 128), (256, None), (96, None),
                                             (4608, 1152), (24, None)])
def test_tile_layout_is_the_rotation(channels, block):
    # plan_layout checks itself against the rotation and raises on a wrong split.
    layout = plan_layout(channels, HadamardRotation(channels, block, random_signs=True))
    assert layout.rows * layout.cols == channels
    assert layout.rows_p >= 16 and layout.cols_p >= 16  # tl.dot's minimum


def test_unsupported_layout_is_refused():
    with pytest.raises(ValueError, match="torch backend"):
        plan_layout(36 * 2**12, HadamardRotation(36 * 2**12))


@needs_triton
def test_rejects_bad_arguments(monkeypatch):
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="bits"):
        fused_transform_quantize(x, bits=1)
    with pytest.raises(TypeError, match="float32"):
        fused_transform_quantize(x.double(), bits=4)
    with pytest.raises(ValueError, match="inv_scale"):
        fused_transform_quantize(x, inv_scale=torch.ones(63), bits=4)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not fused_supported(x)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        fused_transform_quantize(x, bits=4)


def test_reports_when_triton_is_missing(monkeypatch):
    import benchmark.quant.kernels as kernels

    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: None)
    assert not kernels.triton_available() and not kernels.fused_supported(torch.randn(2, 64))
    with pytest.raises(RuntimeError, match="triton is not installed"):
        kernels.fused_transform_quantize(torch.randn(2, 64), bits=4)


@needs_triton
@needs_interpreter
def test_gpu_perf_model_swap_on_a_tiny_pixart():
    """gpu_perf's W4A4 swap on a tiny PixArt: fused and torch paths agree, undo restores."""
    pytest.importorskip("diffusers")
    from benchmark.testing.pixart import build_pixart, pixart_inputs, swap_in

    model = build_pixart(latent=4, layers=1, heads=2, head_dim=64, caption_channels=32)
    inputs = pixart_inputs(model, batch=2, text_tokens=3, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        full = model(**inputs)[0]
        outs = []
        for fused in (False, True):
            restore = swap_in(model, "hadanorm", {"alpha": 0.5}, "w4a4", fused=fused)
            outs.append(model(**inputs)[0])
            restore()
        assert torch.equal(model(**inputs)[0], full)
    assert not torch.equal(outs[0], full)  # quantization did happen
    assert torch.allclose(outs[1], outs[0], rtol=0, atol=1e-4 * outs[0].abs().max().item())


@needs_triton
@needs_interpreter
def test_gpu_check_script_runs_as_its_cpu_twin(capsys):
    """The GPU check script itself, on the CPU under the interpreter: every case passes."""
    from scripts import gpu_check

    status = gpu_check.main(["--device", "cpu", "--tokens", "8", "--cases", "128-full-signs", "1152-none",
                             "--dtypes", "fp32", "bf16", "--bits", "4", "None", "--paths", "split3"])
    out = capsys.readouterr().out
    assert status == 0 and "ALL PASS" in out
    assert out.count("PASS 128-full-signs") == 2 * 2 * 2  # dtypes x bits x grids


@needs_triton
@needs_interpreter
def test_gpu_perf_script_runs_as_its_cpu_twin(capsys):
    """The GPU performance script on the CPU twin: a kernel row per transform, a model row per
    transform with the torch and fused paths' ratios to full precision."""
    pytest.importorskip("diffusers")
    pytest.importorskip("tabulate")
    from scripts import gpu_perf

    assert gpu_perf.main(["--device", "cpu", "--tokens", "16", "--latent", "8", "--layers", "1",
                          "--text-tokens", "4", "--iters", "1", "--no-compile"]) == 0
    out = capsys.readouterr().out
    for name in gpu_perf.TRANSFORMS:
        assert f"PixArt step w4a4 {name} " in out
    assert "hadanorm-block128 a4" in out and "PixArt step fp" in out


def test_compare_outputs_measures_a_flip_in_true_grid_steps():
    """A zero-point row that does not reach 0 spans fewer steps than the grid: a one-step flip
    there is one step given the grid's own step, but 1.5 steps (levels / (levels - 1) at 2
    bits) by the reference's range alone, on which the GPU check once failed."""
    from benchmark.quant.grid import grid_step

    x = torch.tensor([[1.2, 1.49, 3.0]])  # the grid holds 0: [0, 3], step 1
    ref = fake_quantize(x, 2)
    step = grid_step(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), 2)
    assert step.item() == 1.0 and ref.tolist() == [[1.0, 1.0, 3.0]]
    flipped = ref.clone()
    flipped[0, 1] = 2.0  # 1.49 rounded up instead of down
    assert compare_outputs(flipped, ref, 2, step).ok(max_fraction=1.0)  # one element of three
    assert compare_outputs(flipped, ref, 2, step).max_steps == pytest.approx(1.0, abs=1e-3)
    assert compare_outputs(flipped, ref, 2).max_steps == pytest.approx(1.5, abs=1e-3)


def test_occupancy_of_a_kernel_from_its_resources():
    """compile_check's programs per multiprocessor: the least of what shared memory, registers
    and warp slots allow (sm_90: the 4608-wide kernel fits once, by either resource)."""
    from scripts.compile_check import programs_per_sm

    assert programs_per_sm(90, 180224, 255, 8) == 1      # shared memory and registers: one each
    assert programs_per_sm(90, 1024, 255, 8) == 1        # registers alone: 8 warps x 8,192
    assert programs_per_sm(90, 45056, 168, 4) == 3       # registers: 21,504 per program
    assert programs_per_sm(90, 32, 32, 4) == 16          # warp slots: 64 / 4
    assert programs_per_sm(75, 1024, 32, 4) is None      # an arch it has no table for


@needs_triton
@needs_interpreter
def test_the_exactness_check_runs_the_runs_kernel(monkeypatch):
    """The fp check of a cell runs the online part on the kernel the cell runs (it took "auto",
    the fused kernel on a GPU, even under --kernel torch)."""
    import benchmark.quant.kernels as kernels
    from benchmark import CalibrationStats, create_transform
    from benchmark.transform.exactness import exactness_error

    calls = []
    fused = kernels.fused_transform_quantize
    monkeypatch.setattr(kernels, "fused_transform_quantize", lambda *a, **k: calls.append(1) or fused(*a, **k))
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(0))
    layers, stats = [torch.nn.Linear(64, 32)], CalibrationStats.from_activations(x)
    assert exactness_error(create_transform("hadanorm"), layers, stats, x, kernel="triton") < 1e-5
    assert calls  # the fused kernel ran
    calls.clear()
    assert exactness_error(create_transform("hadanorm"), layers, stats, x, kernel="torch") < 1e-5
    assert not calls
