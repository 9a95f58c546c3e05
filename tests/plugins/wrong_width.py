"""A broken plugin: its module's first output is one channel narrower than its linear's."""

from benchmark import AffineTransform, QuantizedGroup


class _Narrow(QuantizedGroup):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        first, *rest = self.inner(x)
        return (first[..., :-1], *rest)


class WrongWidth(AffineTransform):
    def quantize(self, linears, precision, stats=None):
        return _Narrow(super().quantize(linears, precision, stats))


def wrong_width() -> WrongWidth:
    """Drops the last output channel (wrong on purpose)."""
    return WrongWidth(name="wrong_width")


TRANSFORMS = {"wrong_width": wrong_width}
