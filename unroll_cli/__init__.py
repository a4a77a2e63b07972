"""unroll-train: a Hydra experiment runner for unrolled sparse-coding networks."""
__version__ = "0.1.0"
