"""A broken plugin: it rotates the activations but forgets to fold the rotation into W."""

from benchmark import AffineTransform, TransformedLinear


class Inexact(AffineTransform):
    def _build(self, linears, precision, scale, rotation, info):
        module = TransformedLinear(linears, precision, center=False, scale=None, rotation=None)
        module.rotation = rotation  # applied online only: the output changes
        return module


def inexact() -> Inexact:
    """Rotates without folding (wrong on purpose)."""
    return Inexact(name="inexact", rotation="full")


TRANSFORMS = {"inexact": inexact}
