"""Every fused fastgan layer with a small input shape: the capture tests' common list."""
import fastgan.nn as fnn


def fused_layers():
    """(name, factory(impl) -> module, input shape) for every fused fastgan layer."""
    return [
        ("BatchNormAct2d", lambda impl: fnn.BatchNormAct2d(6, impl=impl), (8, 6, 5, 7)),
        ("BatchNormAct1d", lambda impl: fnn.BatchNormAct1d(6, impl=impl), (8, 6)),
        ("GroupNormAct", lambda impl: fnn.GroupNormAct(3, 6, impl=impl), (4, 6, 5, 7)),
        ("LayerNormAct2d", lambda impl: fnn.LayerNormAct2d(6, impl=impl), (4, 6, 5, 7)),
        ("InstanceNormAct2d", lambda impl: fnn.InstanceNormAct2d(6, affine=True, impl=impl), (4, 6, 5, 7)),
        ("PixelShuffleUpsample", lambda impl: fnn.PixelShuffleUpsample(6, 4, impl=impl), (4, 6, 5, 5)),
        ("MinibatchDiscrimination", lambda impl: fnn.MinibatchDiscrimination(12, 5, 3, impl=impl), (9, 12)),
        ("MinibatchStdDev", lambda impl: fnn.MinibatchStdDev(4), (8, 6, 3, 3)),
    ]
