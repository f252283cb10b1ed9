"""GAN models built from fastgan's fused layers (or, with ``fused=False``, plain PyTorch ones)."""
from .dcgan import (ACTIVATIONS, NORMS, DCGANDiscriminator, DCGANGenerator, build_dcgan, dcgan_init, norm_act,
                    set_impl)
from .mlp import MLPDiscriminator, MLPGenerator

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "build_dcgan", "MLPGenerator", "MLPDiscriminator",
           "dcgan_init", "norm_act", "set_impl", "NORMS", "ACTIVATIONS"]
