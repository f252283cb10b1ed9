"""Drop-in ``nn.Module`` versions of fastgan's fused ops."""
from .batch_norm_act import (BatchNormAct1d, BatchNormAct2d, BatchNormLeakyReLU2d, BatchNormReLU2d,
                             from_batch_norm)
from .convert import convert
from .minibatch import MinibatchDiscrimination, MinibatchStdDev
from .pixel_shuffle import PixelShuffleUpsample, icnr_
from .virtual_batch_norm import VirtualBatchNorm1d, VirtualBatchNorm2d, virtual_batch_reference
from .group_norm_act import GroupNormAct, InstanceNormAct2d, LayerNormAct2d, from_group_norm, from_instance_norm
from .sync_batch_norm_act import SyncBatchNormAct, SyncBatchNormAct1d, SyncBatchNormAct2d, convert_sync
from .one_pass import separate_batches

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormLeakyReLU2d", "BatchNormReLU2d", "GroupNormAct",
           "InstanceNormAct2d", "LayerNormAct2d", "from_batch_norm", "from_group_norm", "from_instance_norm",
           "MinibatchDiscrimination", "MinibatchStdDev", "PixelShuffleUpsample", "icnr_", "VirtualBatchNorm1d", "VirtualBatchNorm2d",
           "virtual_batch_reference", "convert",
           "SyncBatchNormAct", "SyncBatchNormAct1d", "SyncBatchNormAct2d", "convert_sync", "separate_batches"]
