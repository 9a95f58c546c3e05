"""The Python API as a new user meets it: quantize_ and calibrate on modules of every shape."""

import pytest
import torch
from torch import nn

from benchmark import UserError, calibrate, quantize_
from benchmark.families.examples import tiny_transformer


class Wrapper(nn.Module):
    """A pipeline-like module that holds a transformer and linears of its own."""

    def __init__(self):
        super().__init__()
        self.transformer = tiny_transformer("pixart")
        self.head = nn.Linear(4, 4)


def test_a_tensor_as_calibration_says_to_call_calibrate():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(UserError, match="not a tensor.*calibrate"):
        quantize_(model, "smoothquant", "w4a4", calibration=torch.randn(2, 4, 8))
    assert isinstance(model[0], nn.Linear)  # nothing was swapped


def test_family_by_name_and_unknown_names():
    transformer = tiny_transformer("pixart")
    by_name = quantize_(transformer, "none", "w4a4", family="pixart")
    found = list(by_name.modules)
    by_name.restore()
    automatic = quantize_(transformer, "none", "w4a4")
    assert list(automatic.modules) == found and all(name.startswith("transformer_blocks.") for name in found)
    automatic.restore()
    with pytest.raises(UserError, match="unknown model family 'pixar'; available: .*pixart"):
        quantize_(transformer, "none", "w4a4", family="pixar")


def test_a_wrapped_transformer_keeps_its_family():
    wrapper = Wrapper()
    alone = len(quantize_(tiny_transformer("pixart"), "none", "w4a4").modules)
    handle = quantize_(wrapper, "none", "w4a4")
    names = list(handle.modules)
    assert len(names) == alone and all(name.startswith("transformer.transformer_blocks.") for name in names)
    assert isinstance(wrapper.head, nn.Linear)  # outside the transformer's blocks: left alone
    handle.restore()
    assert not any(type(m).__name__ == "QuantizedMember" for m in wrapper.modules())


def test_calibration_of_a_wrapper_matches_its_groups_and_names_what_is_missing():
    wrapper = Wrapper()
    inputs = torch.randn(1, 4, 8, 8)

    def run():
        text = torch.randn(1, 3, wrapper.transformer.config.caption_channels)
        wrapper.transformer(inputs, encoder_hidden_states=text,
                            timestep=torch.tensor([10]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})

    stats = calibrate(wrapper, run)
    with quantize_(wrapper, "smoothquant", "w4a4", calibration=stats) as handle:
        assert set(handle.modules) == set(stats)
    del stats[sorted(stats)[0]]
    with pytest.raises(UserError, match=r"no entry for group 'transformer\.transformer_blocks\.0\..*they hold"):
        quantize_(wrapper, "smoothquant", "w4a4", calibration=stats)
