"""The paper's six activation transforms, each a point of ``benchmark.AffineTransform``.

They are registered through the ``hadabench.transforms`` entry points in pyproject.toml,
the same mechanism a third-party plugin uses.
"""
