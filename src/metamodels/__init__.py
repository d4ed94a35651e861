"""metamodels: model zoos with known ground truth, and meta-models that read weights."""

__version__ = "0.1.0"
