"""GAN models built from fastgan's fused layers (or, with ``fused=False``, plain PyTorch ones)."""
from .dcgan import (ACTIVATIONS, DOWNSAMPLE, MINIBATCH, NORMS, UPSAMPLE, DCGANDiscriminator, DCGANGenerator,
                    apply_spectral_norm, build_dcgan, dcgan_init, has_vbn, norm_act, set_impl)
from .mlp import MLPDiscriminator, MLPGenerator
from .encoder import Encoder, build_encoder
from .multi_generator import MultiHeadGenerator, generator_ids

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "build_dcgan", "MLPGenerator", "MLPDiscriminator",
           "dcgan_init", "norm_act", "set_impl", "NORMS", "ACTIVATIONS", "MINIBATCH", "DOWNSAMPLE", "UPSAMPLE",
           "apply_spectral_norm", "has_vbn", "MultiHeadGenerator", "generator_ids",
           "Encoder", "build_encoder"]
