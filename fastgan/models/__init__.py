"""GAN models built from fastgan's fused layers (or, with ``fused=False``, plain PyTorch ones)."""
from .dcgan import (ACTIVATIONS, DOWNSAMPLE, MINIBATCH, NORMS, UPSAMPLE, DCGANDiscriminator, DCGANGenerator,
                    apply_spectral_norm, build_dcgan, dcgan_init, has_vbn, norm_act, set_impl)
from .mlp import MLPDiscriminator, MLPGenerator
from .attention import SelfAttention2d
from .dropout import SamplingDropout, add_dropout, keep_dropout_when_sampling
from .encoder import Encoder, build_encoder
from .multi_generator import MultiHeadGenerator, generator_ids
from .resnet import ResBlockDown, ResBlockUp, ResNetDiscriminator, ResNetGenerator

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "build_dcgan", "MLPGenerator", "MLPDiscriminator",
           "dcgan_init", "norm_act", "set_impl", "NORMS", "ACTIVATIONS", "MINIBATCH", "DOWNSAMPLE", "UPSAMPLE",
           "apply_spectral_norm", "has_vbn",
           "SelfAttention2d", "ResBlockUp", "ResBlockDown", "ResNetGenerator", "ResNetDiscriminator", "add_dropout",
           "SamplingDropout", "keep_dropout_when_sampling",
           "MultiHeadGenerator", "generator_ids", "Encoder", "build_encoder"]
