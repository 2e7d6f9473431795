"""detok: denoising visual tokenizers (l-DeTok) and the generators trained on their latents."""

__version__ = "0.1.0"
