"""The unmodified baselines of the padding-free downsampling paper: MobileNetV3 (Howard et al., ICCV 2019,
arXiv 1905.02244), MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381), GhostNet (Han et al., CVPR
2020, arXiv 1911.11907).

Rewrites: the generic ones. timm's hard-swish/hard-sigmoid variants become torch's, which export as the
ONNX HardSwish/HardSigmoid operators (opset 14+); BN folding covers timm's BatchNormAct2d.
"""

from __future__ import annotations

from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import FIRST_CONV, KeepFloat
from effexport.recipes._timm import register_timm

VARIANTS = {  # recipe name: (timm name, paper)
    "mobilenetv3_large": ("mobilenetv3_large_100", "MobileNetV3, ICCV 2019 (arXiv 1905.02244)"),
    "mobilenetv3_small": ("mobilenetv3_small_100", "MobileNetV3, ICCV 2019 (arXiv 1905.02244)"),
    "mobilenetv2": ("mobilenetv2_100", "MobileNetV2, CVPR 2018 (arXiv 1801.04381)"),
    "ghostnet": ("ghostnet_100", "GhostNet, CVPR 2020 (arXiv 1911.11907)"),
}

STEM_INT8 = KeepFloat(FIRST_CONV, "the stem sees the normalized image through 3 channels: little compute, large error")
SE_INT8 = KeepFloat(r"/se/conv_(reduce|expand)/", "squeeze-excitation gates scale whole channels from a pooled "
                    "vector: no compute to gain, their error multiplies into every pixel")
INT8_KEEP_FLOAT = {  # judged on random weights only: no trained model of these is reachable here
    "mobilenetv3_large": (STEM_INT8, SE_INT8),
    "mobilenetv3_small": (STEM_INT8, SE_INT8),
}

for _name, (_timm_name, _paper) in VARIANTS.items():
    register_timm(_name, _timm_name, family=_name.split("_")[0], size=224, rewrites=GENERIC_REWRITES, paper=_paper,
                  int8_keep_float=INT8_KEEP_FLOAT.get(_name, ()))
