"""ResNeXt-101 32xNd trained weakly supervised on Instagram hashtags (Mahajan et al., ECCV 2018,
arXiv 1805.00932), and the FixRes 32x48d fine-tuned at 320 (Touvron et al., NeurIPS 2019, arXiv 1906.06423).

Plain ResNeXt: only the generic rewrites (BN folding). The 32x48d has no timm entry point and is built from
timm's ResNet class with the published configuration (layers 3-4-23-3, cardinality 32, base width 48). Its
829M parameters (3.3 GB in FP32) export with ONNX external data. Original checkpoints (torch hub, FixRes)
use torchvision's key names, which timm's ResNet shares; FixRes's `model`/`module.` wrapping is unwrapped.
"""

from __future__ import annotations

from functools import partial

from effexport.errors import UsageError
from effexport.exporter.rewrite import GENERIC_REWRITES
from effexport.recipes import Recipe, register
from effexport.recipes._timm import register_timm, timm_preprocess

PAPER = "Exploring the Limits of Weakly Supervised Pretraining, ECCV 2018 (arXiv 1805.00932)"
FIX_PAPER = "FixRes: Fixing the train-test resolution discrepancy, NeurIPS 2019 (arXiv 1906.06423)"

VARIANTS = {  # recipe name: (timm name, too large for the default test run)
    "resnext101_32x8d_wsl": ("resnext101_32x8d", False),
    "resnext101_32x16d_wsl": ("resnext101_32x16d", True),
    "resnext101_32x32d_wsl": ("resnext101_32x32d", True),
}

for _name, (_timm_name, _heavy) in VARIANTS.items():
    register_timm(_name, _timm_name, family="resnext-wsl", size=224, rewrites=GENERIC_REWRITES, paper=PAPER,
                  pretrained_tag="fb_wsl_ig1b_ft_in1k", aliases=(f"{_timm_name}.fb_wsl_ig1b_ft_in1k",),
                  heavy=_heavy, timm_alias=False)


def build_resnext101_32x48d(pretrained: bool, num_classes: int | None = None):
    """timm's ResNet with the 32x48d configuration; timm ships no weights for it."""
    if pretrained:
        raise UsageError("timm has no pretrained weights for ResNeXt-101 32x48d: pass --weights PATH "
                         "(the WSL or FixRes checkpoint)")
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=48,
                  num_classes=1000 if num_classes is None else num_classes).eval()


for _name, _size, _paper in (("resnext101_32x48d_wsl", 224, PAPER), ("fix_resnext101_32x48d_wsl", 320, FIX_PAPER)):
    register(Recipe(
        name=_name,
        family="resnext-wsl",
        build=partial(build_resnext101_32x48d),
        preprocess=timm_preprocess("resnext101_32x32d", _size, "fb_wsl_ig1b_ft_in1k"),
        rewrites=GENERIC_REWRITES,
        source="timm ResNet(Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=48)",
        paper=_paper,
        pretrained_available=False,
        heavy=True,
        notes="over 2 GB of weights: the ONNX model stores them as external data (model.onnx.data)",
    ))
