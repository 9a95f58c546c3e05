"""A transform that stalls while HADABENCH_TEST_STALL is set (so that a test can kill a run at
a known point) and otherwise quantizes like "none"."""

import os
import time

from benchmark import AffineTransform


class Stalls(AffineTransform):
    def quantize(self, linears, precision, stats=None):
        while os.environ.get("HADABENCH_TEST_STALL"):
            time.sleep(0.5)
        return super().quantize(linears, precision, stats)


def stalls() -> Stalls:
    """Waits in quantize while HADABENCH_TEST_STALL is set; otherwise no transform."""
    return Stalls(name="stalls")


TRANSFORMS = {"stalls": stalls}
