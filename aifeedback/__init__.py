"""aifeedback: align text-to-image diffusion models with human or AI preferences (Diffusion-DPO)."""

__version__ = "0.1.0"
