"""gansvc: a GAN training and evaluation service with fused C++/CUDA kernels."""

__version__ = "0.1.0"
