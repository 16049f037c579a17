"""moequant: Mixture-of-Experts checkpoints -> quantized MLX checkpoints, with a plan that says why."""

__version__ = "0.1.0"
