import pytest  # noqa: E402

import benchmark  # noqa: F401  (the torchvision shim must run before diffusers/transformers)
from benchmark.families.registry import FAMILIES  # noqa: E402
from benchmark.metrics.registry import METRICS  # noqa: E402
from benchmark.models import ADAPTERS  # noqa: E402
from benchmark.quant.kernels import KERNELS  # noqa: E402
from benchmark.transform.registry import TRANSFORMS  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_registries(monkeypatch):
    """Every test starts from the installed entries: plugin files one test loads, or entry
    points it installs, do not leak into the next."""
    for registry in (TRANSFORMS, FAMILIES, METRICS, ADAPTERS, KERNELS):
        monkeypatch.setattr(registry, "_entries", None)
