"""One-sided precisions (a4, w4), role/block subsets, the affine lattice and the
sensitivity study (benchmark/run/subset.py, benchmark/run/sensitivity.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import benchmark.transform.base as transform_module
from benchmark import CalibrationStats, create_transform, quantize_linear
from benchmark.cli import main
from benchmark.models import ROLES, load_model
from benchmark.results.schema import read_results
from benchmark.run.config import RunConfig, load_config, parse_transforms
from benchmark.run.sensitivity import (
    CORRECTED,
    LATTICE,
    READINGS,
    STUDY_DEFAULTS,
    SensitivityStudy,
    _claims_markdown,
    _headline,
    claims,
    mean_ci,
    paired_ci,
    point_name,
)
from benchmark.run.subset import Subset, parse_blocks, parse_roles

FAST = ["--calib-size", "2", "--eval-size", "2", "--steps", "2", "--metrics", "sqnr", "--device", "cpu"]


def _group(seed=0, channels=48):
    torch.manual_seed(seed)
    linears = [nn.Linear(channels, 24) for _ in range(2)]
    x = torch.randn(3, 20, channels) * (1 + 4 * torch.rand(channels)) + 2 * torch.randn(channels)
    return linears, x, CalibrationStats.from_activations(x)


@pytest.mark.parametrize("name", ["none", "quarot", "hadanorm", "smoothquant"])
def test_a4_is_w4a4_with_weights_unquantized(name, monkeypatch):
    linears, x, stats = _group()
    a4 = quantize_linear(linears, name, "a4", calibration=stats)(x)
    monkeypatch.setattr(transform_module, "quantize_weight", lambda w, *args, **kw: w)
    wa4 = quantize_linear(linears, name, "w4a4", calibration=stats)(x)
    for left, right in zip(a4, wa4, strict=False):
        assert torch.equal(left, right)
    monkeypatch.undo()
    assert not torch.equal(quantize_linear(linears, name, "w4a4", calibration=stats)(x)[0], a4[0])


def test_w4_quantizes_weights_only():
    linears, x, stats = _group(1)
    (y,) = quantize_linear(linears[:1], "none", "w4", calibration=stats)(x)
    from benchmark import quantize_weight
    assert torch.allclose(y, nn.functional.linear(x, quantize_weight(linears[0].weight.detach(), 4),
                                                  linears[0].bias), atol=1e-5)


def test_affine_lattice_points_are_the_baselines():
    linears, x, stats = _group(2)
    for spec, baseline in (("affine(center=true, alpha=0.5, rotation=full)", "hadanorm"),
                           ("affine(rotation=full, random_signs=true)", "quarot"),
                           ("affine(alpha=0.5, rotation=full)", "sdcb"), ("affine", "none")):
        (parsed,) = parse_transforms(spec)
        mine = quantize_linear(linears, create_transform(parsed.name, **dict(parsed.params)), "w4a4", stats)(x)
        theirs = quantize_linear(linears, baseline, "w4a4", calibration=stats)(x)
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=False)), spec
    names = [point_name(s) for s in parse_transforms(LATTICE)]
    assert names == ["none", "C", "S", "R", "C+S", "C+R", "S+R", "C+S+R", "R±", "C+R±", "S+R±", "C+S+R±"]
    with pytest.raises(ValueError, match="needs a rotation"):
        create_transform("affine", random_signs=True)


def test_subset_parsing():
    assert parse_roles("ffn_up, self_attn_qkv") == ["self_attn_qkv", "ffn_up"]  # canonical order
    assert parse_roles(list(reversed(ROLES))) is None  # every role is the default
    assert parse_blocks("0-2,5") == [0, 1, 2, 5] and parse_blocks([3, 1]) == [1, 3] and parse_blocks(2) == [2]
    assert Subset.of("cross_attn_kv", "0-1,3").label == "roles=cross_attn_kv;blocks=0-1,3"
    assert parse_roles("image_qkv,self_attn_qkv") == ["image_qkv", "self_attn_qkv"]  # another family's: checked later
    for bad, match in (("", "empty"), (",", "empty")):
        with pytest.raises(ValueError, match=match):
            parse_roles(bad)
    for bad in ("3-1", "x", "-1"):
        with pytest.raises(ValueError, match="--blocks"):
            parse_blocks(bad)


def test_config_hash_of_roles():
    default = RunConfig().validate().hash()
    assert load_config(None, {"roles": ",".join(ROLES)}).hash() == default
    assert load_config(None, {"roles": "ffn_up"}).hash() != default
    assert load_config(None, {"blocks": "0-1"}).hash() not in (default, load_config(None, {"blocks": "0"}).hash())


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


def test_one_role_leaves_every_other_linear_untouched(embedded):
    before = dict(embedded.transformer.named_modules())
    subset = Subset.of("cross_attn_kv", "1-2")
    subset.check(embedded.targets())
    with embedded.quantized("affine", "a4", only=subset.only(embedded.targets()), center=True,
                           rotation="full") as groups:
        assert sorted(groups) == ["transformer_blocks.1.cross_attn_kv", "transformer_blocks.2.cross_attn_kv"]
        after = dict(embedded.transformer.named_modules())
        swapped = {name for name in before if name in after and after[name] is not before[name]}
        assert swapped == {f"transformer_blocks.{b}.attn2.{p}" for b in (1, 2) for p in ("to_k", "to_v")}
        linears = [n for n, m in before.items() if isinstance(m, nn.Linear)]
        assert all(after[n] is before[n] for n in linears if n not in swapped)
    assert all(m is before[n] for n, m in embedded.transformer.named_modules())  # restored
    with pytest.raises(ValueError, match="out of range: this model has 4 blocks"):
        Subset.of(None, "2-4").check(embedded.targets())


@pytest.mark.parametrize("flags, message", [
    (["--roles", "ffn_sideways"], "this model has no 'ffn_sideways' targets"),
    (["--roles", ","], "role list is empty"),
    (["--blocks", "0-9"], "block 4 is out of range"),
    (["--precisions", "a0"], "unknown precision 'a0'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *FAST, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines ("model: loading") may precede it
    assert err[-1].startswith("hadabench: error:") and message in err[-1]
    assert sum("error" in line for line in err) == 1
    assert not out.exists()  # nothing written


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """A small study (two transforms, two roles, blocks 0-1) and the plain a4 run beside it."""
    root = tmp_path_factory.mktemp("study")
    common = [*FAST, "--cache-dir", str(root / "cache"), "--transforms", "affine,hadanorm"]
    assert main(["sensitivity", "--out", str(root / "study"), *common,
                 "--roles", "self_attn_qkv,cross_attn_kv", "--blocks", "0-1"]) == 0
    assert main(["run", "--out", str(root / "run"), *common, "--precisions", "a4",
                 "--roles", "self_attn_qkv,cross_attn_kv", "--blocks", "0-1"]) == 0
    return root


def test_study_cells_tables_and_report(studied):
    results = read_results(studied / "study")
    roles = ["self_attn_qkv", "cross_attn_kv"]
    expected = {f"a4/{t}" for t in ("affine", "hadanorm")}
    expected |= {f"a4/{t} [roles={r};blocks=0-1]" for t in ("affine", "hadanorm") for r in roles}
    expected |= {f"a4/affine [roles={r};blocks={b}]" for r in roles for b in (0, 1)}
    assert set(results["cells"]) == expected
    cell = results["cells"]["a4/hadanorm [roles=cross_attn_kv;blocks=0-1]"]
    assert cell["subset"] == {"roles": ["cross_attn_kv"], "blocks": [0, 1]}
    assert sorted(cell["groups"]) == ["transformer_blocks.0.cross_attn_kv", "transformer_blocks.1.cross_attn_kv"]
    study = results["study"]
    assert study["kind"] == "sensitivity" and study["rows"] == ["all", *roles] and study["blocks"] == [0, 1]
    table = study["tables"]["a4"]
    entry = table["roles"]["self_attn_qkv"]["C+S+R"]
    assert entry["mean"] is not None and entry["n"] == 2
    assert entry["low"] is None  # 2 captions: the bootstrap-t interval is unbounded, none is recorded
    assert set(table["blocks"]["cross_attn_kv"]) == {"0", "1"}
    assert table["claims"]["worst_quantizers"]["ranking_worst_first"]
    assert "C+S+R minus S+R" not in table["claims"]["corrections"].get("quantized_token", {}).get(
        "centering_makes_rotation_work", {}).get("comparisons", {})
    readme = (studied / "study" / "README.md").read_text()
    assert "sensitivity_a4.png" in readme and "| self\\_attn\\_qkv |" in readme  # escaped: from a results file
    assert (studied / "study" / "sensitivity_a4.png").stat().st_size > 1000
    assert (studied / "study" / "blocks_a4.png").is_file()
    from benchmark.reports.leaderboard import render
    board = render([studied / "study" / "results.json"], studied / "board.md")
    assert "[sensitivity study, run study](study/README.md)" in board and "### " not in board  # linked, not tabled
    # only the all-roles cells (a plain run's cells) keep their images
    assert sorted(p.name for p in (studied / "study" / "images" / "a4").iterdir()) == ["affine", "hadanorm"]


def test_study_all_roles_row_is_the_plain_run(studied):
    study, run = read_results(studied / "study"), read_results(studied / "run")
    for label in ("affine", "hadanorm"):
        assert study["cells"][f"a4/{label}"]["per_sample"]["sqnr_db"] == \
            run["cells"][f"a4/{label}"]["per_sample"]["sqnr_db"]


def test_study_resumes_and_refuses_another_view(studied, capsys):
    common = [*FAST, "--cache-dir", str(studied / "cache"), "--transforms", "affine,hadanorm",
              "--roles", "self_attn_qkv,cross_attn_kv", "--blocks", "0-1"]
    assert main(["sensitivity", "--out", str(studied / "study"), *common]) == 0
    assert "done before" in capsys.readouterr().err
    assert main(["sensitivity", "--out", str(studied / "study"), *common, "--block-view", "hadanorm"]) == 2
    assert main(["sensitivity", "--out", str(studied / "x"), *common, "--block-view", "quarot"]) == 2
    assert not (studied / "x").exists()


def test_role_list_with_every_role_is_the_default_run(tmp_path):
    cache = str(tmp_path / "cache")
    assert main(["run", "--out", str(tmp_path / "r"), *FAST, "--cache-dir", cache, "--precisions", "a4",
                 "--transforms", "none"]) == 0
    first = json.loads((tmp_path / "r" / "results.json").read_text())
    assert main(["run", "--out", str(tmp_path / "r"), *FAST, "--cache-dir", cache, "--precisions", "a4",
                 "--transforms", "none", "--roles", ",".join(reversed(ROLES))]) == 0  # same hash: resumed
    assert json.loads((tmp_path / "r" / "results.json").read_text())["config_hash"] == first["config_hash"]


def test_bootstrap_intervals():
    values = [1.0, 2.0, 4.0, 8.0, 3.0]
    ci = mean_ci(values)
    assert ci["low"] < ci["mean"] < ci["high"] and ci["mean"] == pytest.approx(3.6) and ci == mean_ci(values)
    # a constant difference: no width; the exact sign-flip p-value of 3 captions, 2 / 2**3
    assert paired_ci([2, 3, 4], [1, 2, 3]) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3, "p": 0.25}
    assert mean_ci([1.0, float("inf")])["low"] is None
    assert paired_ci([1.0, float("inf")], [0.0, 0.0])["p"] is None


def test_claims_read_holm_corrected_sign_flip_tests():
    rng = np.random.default_rng(0)
    base = rng.normal(10, 3, size=12)
    per_sample = {(row, name): list(base) for row in ("all", "self_attn_qkv", "cross_attn_kv")
                  for name in ("none", "C", "S", "R")}
    per_sample["self_attn_qkv", "C+S+R"] = list(base + 1.0)  # helps, caption by caption
    per_sample["cross_attn_kv", "C+S+R"] = list(base + rng.normal(0, 0.5, size=12))  # noise only
    per_sample["all", "C+S+R"] = list(base + 1.0)
    out = claims(per_sample, ["self_attn_qkv", "cross_attn_kv"], ["none", "C", "S", "R", "C+S+R"])
    helps = out["corrections"]["quantized_token"]["hadanorm_helps_all_but_text"]
    qkv = helps["per_role"]["self_attn_qkv"]
    assert qkv["p"] == 2 / 2 ** 12 and qkv["p_holm"] == 2 * qkv["p"]  # Holm over the claim's 2 roles
    assert helps["helps"] == ["self_attn_qkv"] and helps["verdict"] == "holds"
    composition = out["corrections"]["quantized_token"]["composition_beats_single"]
    assert composition["rows_where_it_holds"] == 2 and composition["verdict"].startswith("undecided")


ROLE_MEANS = {"self_attn_qkv": 19.0, "self_attn_out": 21.0, "cross_attn_q": 30.0, "cross_attn_kv": 27.0,
              "cross_attn_out": 20.0, "ffn_up": 15.0, "ffn_down": 18.0}


def _per_caption(mean, n=12, seed=0):
    """Per-caption values: one shared caption difficulty plus ``mean``, so paired differences are constant."""
    return list(np.random.default_rng(seed).normal(0, 3, size=n) + mean)


def test_claim_one_under_both_readings():
    # cross_attn_q is the best role and cross_attn_out among the worst: the image-token reading
    # (cross_attn_q claimed worst, cross_attn_out not) fails, "OP = both output projections" holds.
    roles = list(ROLE_MEANS)
    per_sample = {(r, "none"): _per_caption(m) for r, m in ROLE_MEANS.items()}
    worst = claims(per_sample, roles, ["none"])["worst_quantizers"]
    first, second = (worst["readings"][name] for name in READINGS)
    assert first["claimed_worst"] == ["self_attn_qkv", "self_attn_out", "cross_attn_q", "ffn_up", "ffn_down"]
    assert first["others"] == ["cross_attn_kv", "cross_attn_out"] and first["verdict"] == "does not hold"
    assert second["claimed_worst"] == ["self_attn_qkv", "self_attn_out", "cross_attn_out", "ffn_up", "ffn_down"]
    assert second["others"] == ["cross_attn_q", "cross_attn_kv"] and second["verdict"] == "holds"
    assert len(second["pairs"]) == 10 and all(p["other_minus_worse"]["p_holm"] <= 0.05 for p in second["pairs"])
    assert worst["ranking_worst_first"][0] == "ffn_up" and worst["ranking_worst_first"][-1] == "cross_attn_q"
    # noise instead of a difference: neither reading can be decided
    noisy = {(r, "none"): _per_caption(20.0, seed=i) for i, r in enumerate(roles)}
    for reading in claims(noisy, roles, ["none"])["worst_quantizers"]["readings"].values():
        assert reading["verdict"].startswith("undecided")
    # the README states each reading's mapping of the paper's labels onto roles, and its verdict
    text = "\n".join(_claims_markdown(claims(per_sample, roles, ["none"])))
    assert "Reading 1, image-token inputs" in text and "Reading 2, OP = both output projections" in text
    assert "OP → self\\_attn\\_out, cross\\_attn\\_out" in text
    assert "attention inputs → self\\_attn\\_qkv, cross\\_attn\\_q" in text
    assert "**does not hold**" in text and "**holds**" in text


def test_correction_columns_are_named_distinctly_and_planned(embedded):
    names = [point_name(s) for s in parse_transforms(CORRECTED)]
    assert names == [f"{p}{tag}" for tag in ("[fp]", "[exact]") for p in ("C", "C+S", "C+R", "C+S+R", "C+R±", "C+S+R±")]
    assert len(set(names + [point_name(s) for s in parse_transforms(LATTICE)])) == 24
    assert STUDY_DEFAULTS["transforms"] == LATTICE + CORRECTED
    assert point_name(parse_transforms("hadanorm(correction=fp_token)")[0]) == "C+S+R[fp]"
    assert point_name(parse_transforms("dyncenter(correction=exact)")[0]) == "C[exact]"
    with pytest.raises(ValueError, match="correction"):  # no centering, nothing to correct
        create_transform("affine", rotation="full", correction="fp_token")

    def planned(precision):
        study = SensitivityStudy.__new__(SensitivityStudy)
        study.config = load_config(None, {"transforms": ",".join(LATTICE + CORRECTED), "precisions": precision})
        study.subset = Subset.of(None, None)
        study.block_spec = study.config.transforms[0]
        plan = study.plan(embedded.targets())
        cells = {(point_name(spec), "all" if subset is None else subset.roles[0],
                  None if subset is None or subset.blocks is None else subset.blocks) for spec, subset in plan}
        assert len(cells) == len(plan)
        # the all row first (the headline), then the claims' columns, claim 1's first, the blocks view last
        assert all(subset is None for _, subset in plan[:24]) and point_name(plan[24][0]) == "none"
        assert all(subset.blocks is not None for _, subset in plan[-7 * 4:])
        return {(name, row) for name, row, blocks in cells if blocks is None}, len(plan)

    cells, count = planned("a4")
    roles = list(ROLE_MEANS)
    assert {(n, "all") for n in names} <= cells  # the lattice of the whole model under every correction
    for point in ("C", "C+R", "C+S+R", "C+R±", "C+S+R±"):  # what the claims compare role by role
        assert {(point + "[fp]", r) for r in roles} <= cells
        # weights in full precision: exact is fp_token up to rounding, on the all row alone
        assert not any((point + "[exact]", r) in cells for r in roles)
    assert not any(("C+S[fp]", r) in cells for r in roles)
    assert count == 12 * 8 + 12 + 5 * 7 + 7 * 4  # lattice, corrections on all, [fp] on the roles, blocks view
    assert ("C+S+R[exact]", "ffn_up") in planned("w4a4")[0]  # quantized weights: exact differs, every row


def test_claims_and_headline_under_each_correction():
    roles = ["self_attn_qkv", "cross_attn_kv"]
    base = _per_caption(10.0)
    per_sample = {}
    for row in ("all", *roles):
        for name, shift in (("none", 0), ("C", 0), ("S", 0), ("R", 0), ("S+R", 0), ("C+S+R", -1.0), ("R±", 0.5),
                            ("C[fp]", 0), ("C+S+R[fp]", 2.0), ("C+R[fp]", 1.0)):
            per_sample[row, name] = [v + shift for v in base]
    per_sample["all", "C+S+R[exact]"] = [v + 2.0 for v in base]  # exact: the all row alone
    names = sorted({n for _, n in per_sample})
    out = claims(per_sample, roles, names)
    assert set(out["corrections"]) == {"quantized_token", "fp_token", "exact"}
    assert out["corrections"]["fp_token"]["hadanorm_helps_all_but_text"]["verdict"] == "does not hold"  # text helped
    assert out["corrections"]["quantized_token"]["hadanorm_helps_all_but_text"]["verdict"] == "does not hold"
    assert out["corrections"]["fp_token"]["composition_beats_single"]["verdict"] == "holds"
    assert "hadanorm_helps_all_but_text" not in out["corrections"]["exact"]  # no role rows: no role claims
    assert out["corrections"]["fp_token"]["centering_makes_rotation_work"]["verdict"] == "holds"
    exact = out["corrections"]["exact"]["centering_makes_rotation_work"]
    assert list(exact["comparisons"]) == ["C+S+R[exact] minus S+R"] and exact["rows"] == ["all"]
    assert "the `all` row alone: no role-by-role verdict" in "\n".join(_claims_markdown(out))
    versus = out["hadanorm_vs_quarot"]
    assert versus["winner"] == {"quantized_token": "quarot", "fp_token": "hadanorm", "exact": "hadanorm"}
    assert versus["correction_decides"] is True
    same = out["exact_minus_fp_token"]["C+S+R"]  # at a4 the same W mu: tested on the all row
    assert same["mean"] == 0.0 and same["max_abs"] == 0.0 and same["p"] == 1.0
    headline = " ".join(_headline(out, "a4"))
    assert "the correction mode (how a centering transform adds W mu back) decides whether HadaNorm or QuaRot wins" \
        in headline
    assert "with `quantized_token` (the paper's), QuaRot (R±) beats HadaNorm (C+S+R) by 1.50 dB" in headline
    assert "with `fp_token`, HadaNorm (C+S+R[fp]) beats QuaRot (R±) by 1.50 dB" in headline
    assert "0 of 1 significant" in headline and "the role rows run `fp_token` alone and stand for both" in headline
    # one correction only: the headline says the mode was not varied
    lattice = claims({k: v for k, v in per_sample.items() if "[" not in k[1]}, roles,
                     [n for n in names if "[" not in n])
    assert lattice["hadanorm_vs_quarot"]["correction_decides"] is None
    assert "was not varied" in " ".join(_headline(lattice, "a4"))
