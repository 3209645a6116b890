"""The unmodified baselines of the padding-free downsampling paper: MobileNetV3 (Howard et al., ICCV 2019,
arXiv 1905.02244), MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381), GhostNet (Han et al., CVPR
2020, arXiv 1911.11907).

Rewrites: the generic ones. timm's hard-swish/hard-sigmoid variants become torch's, which export as the
ONNX HardSwish/HardSigmoid operators (opset 14+); BN folding covers timm's BatchNormAct2d.
"""

from __future__ import annotations

from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes._timm import register_timm

VARIANTS = {  # recipe name: (timm name, paper)
    "mobilenetv3_large": ("mobilenetv3_large_100", "MobileNetV3, ICCV 2019 (arXiv 1905.02244)"),
    "mobilenetv3_small": ("mobilenetv3_small_100", "MobileNetV3, ICCV 2019 (arXiv 1905.02244)"),
    "mobilenetv2": ("mobilenetv2_100", "MobileNetV2, CVPR 2018 (arXiv 1801.04381)"),
    "ghostnet": ("ghostnet_100", "GhostNet, CVPR 2020 (arXiv 1911.11907)"),
}

# INT8 keeps the stem in float (every recipe's default). The squeeze-excitation convolutions are quantized: kept in
# float, they left float islands that ONNX Runtime runs between quantize/dequantize pairs (mobilenetv3_large INT8 at
# batch 1: 0.88x FP32 with them in float, 1.10x without; AMD EPYC with AVX-512 VNNI, bench/int8.py). No trained
# model of these is reachable here; with trained weights, INT8 tuning keeps in float any layer that proves
# sensitive (calibration/sensitivity.py).

for _name, (_timm_name, _paper) in VARIANTS.items():
    register_timm(_name, _timm_name, family=_name.split("_")[0], size=224, rewrites=GENERIC_REWRITES, paper=_paper)
