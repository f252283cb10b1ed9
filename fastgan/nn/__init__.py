"""Drop-in ``nn.Module`` versions of fastgan's fused ops."""
from .batch_norm_act import (BatchNormAct1d, BatchNormAct2d, BatchNormLeakyReLU2d, BatchNormReLU2d,
                             from_batch_norm)
from .convert import convert

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormLeakyReLU2d", "BatchNormReLU2d",
           "from_batch_norm", "convert"]
