"""One resolved job per command: everything that shapes an artifact's bytes, checked before any work.

The CLI only parses; `resolve_job` turns what was typed into one `Job`: the recipe configured with its options,
the weights, the export options, the calibration, the parity images, the tolerances and the output root. Bad
input is refused here, in one line, before torch builds anything: an unknown recipe, a missing or non-file
`--weights`, a calibration or image source that does not exist, an output root that cannot be written.

Every workflow function (export, backends, calibrate, verify, bench) takes a Job. An artifact's identity is the
digest of the parts of the Job that shape its bytes, every input file named by its contents (`content_digest`),
never by its path or modification time; the folder an artifact lives in is named by the options that shape it
(`ExportOptions.tag`, `Job.variant`), so artifacts built with other options live side by side.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from effexport.calibration.options import Int8Options
from effexport.errors import UsageError
from effexport.exporter.artifacts import DEFAULT_OUT, recipe_dir
from effexport.exporter.io_spec import TOP_K_RULE, GraphIO
from effexport.exporter.labels import Labels, check_count, read_labels
from effexport.exporter.parity import POLICY, Tolerance, looser, tolerance_for
from effexport.recipes import Preprocess, Recipe, RecipeParams, check_recipe_name, configure, get_recipe

DEFAULT_OPSET = 17  # effexport.exporter.onnx.DEFAULT_OPSET, without importing torch here
TOLERANCE_KEYS = ("max_rel", "min_cosine", "min_top1", "max_abs", "min_label_set")
IO_DEFAULTS = {"output": "logits", "input": "float", "bgr": False}


# The largest --img-size: 16 parity inputs at 2048 px are 800 MB of float32 before a single activation.
MAX_IMG_SIZE = 2048


@dataclass(frozen=True)
class ExportOptions:
    """What shapes the ONNX file itself."""

    opset: int = DEFAULT_OPSET
    batch: int = 1
    dynamic_batch: bool = False
    img_size: int | None = None
    simplify: bool = True
    output: str = "logits"  # logits | softmax | sigmoid (io_spec.GraphIO)
    input: str = "float"  # float | uint8-nchw | uint8-nhwc
    bgr: bool = False
    # auto | dynamo | torchscript as asked; resolve_job replaces it with the path that will run (exporter/onnx.py)
    exporter: str = "auto"

    def __post_init__(self):
        GraphIO(self.output, self.input, self.bgr)  # refuses a bad combination in one line
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        if self.dynamic_batch and self.batch != 1:
            raise UsageError("--batch and --dynamic-batch exclude each other")
        if self.img_size is not None and self.img_size < 32:
            raise UsageError(f"--img-size must be at least 32, got {self.img_size}")
        if self.img_size is not None and self.img_size > MAX_IMG_SIZE:
            raise UsageError(f"--img-size must be at most {MAX_IMG_SIZE}, got {self.img_size}: the parity and "
                             f"calibration inputs are float32 batches of 3 x N x N per image (N = 100000 needs 120 GB "
                             f"for one), and efficient CNNs are trained at 600 px or less")

    @property
    def graph_io(self) -> GraphIO:
        return GraphIO(self.output, self.input, self.bgr)

    def identity(self) -> dict:
        """The options as the export identity records them; the graph's ends only when not the defaults, so exports
        made before they existed keep their identity."""
        return {k: v for k, v in asdict(self).items() if k not in IO_DEFAULTS or v != IO_DEFAULTS[k]}

    @property
    def default_exporter(self) -> str:
        """The path `auto` takes at this opset with the torch installed (imports torch)."""
        from effexport.exporter.onnx import choose_exporter

        return choose_exporter(self.opset, "auto")

    @property
    def batch_tag(self) -> str:
        return "dynamic" if self.dynamic_batch else f"b{self.batch}"

    def variant(self, default_size: int) -> str:
        """The folder-name suffix of the options every artifact built from this export shares ('' when default)."""
        parts = []
        if self.img_size is not None and self.img_size != default_size:
            parts.append(f"{self.img_size}px")
        if self.opset != DEFAULT_OPSET:
            parts.append(f"opset{self.opset}")
        if not self.simplify:
            parts.append("nosimplify")
        if self.exporter not in ("auto", self.default_exporter):
            parts.append(self.exporter)  # asked for a path other than the one auto takes at this opset
        parts += self.graph_io.tags
        return "".join(f"-{p}" for p in parts)


@dataclass(frozen=True)
class WeightsSpec:
    """Where the weights come from: a file, timm's pretrained weights, or (neither) random."""

    path: Path | None = None
    pretrained: bool = False
    use_ema: bool = False

    def __post_init__(self):
        if self.path is not None and self.pretrained:
            raise UsageError("give either --weights or --pretrained, not both")


@dataclass(frozen=True)
class Job:
    """Everything one command works from, resolved once."""

    name: str  # as typed
    recipe: Recipe  # configured with `params`
    params: RecipeParams = RecipeParams()
    weights: WeightsSpec = WeightsSpec()
    export: ExportOptions = ExportOptions()
    calibration: Int8Options = Int8Options()  # INT8: the one calibration every INT8 artifact comes from
    images: Path | None = None  # the user's photographs for the parity checks
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)  # overrides of parity.POLICY
    out: Path = DEFAULT_OUT
    force: bool = False
    num_classes: int | None = None  # --num-classes; None: the checkpoint's classifier decides, else the recipe's
    labels: Labels | None = None  # --labels, read and checked

    @property
    def folder(self) -> Path:
        """`<out>/<model>/`: every artifact of this recipe (and point of a slimmable recipe) lives below it."""
        return recipe_dir(self.out, self.recipe.name)

    @property
    def preprocess(self) -> Preprocess:
        size = self.export.img_size
        return self.recipe.preprocess.at(size) if size else self.recipe.preprocess

    @property
    def variant(self) -> str:
        return self.export.variant(self.recipe.preprocess.crop_size[0])

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances.get(precision) or tolerance_for(precision, rule=self.export.graph_io.rule)

    def for_backends(self) -> Job:
        """The same job on the dynamic-batch export every backend artifact is built from. That export is built
        under the looser of the user's FP32 tolerance and the default: it is the source, not the thing judged
        (verify's onnxruntime fp32 row judges it under the user's)."""
        fp32 = looser(self.tolerance("fp32"), tolerance_for("fp32", rule=self.export.graph_io.rule))
        return replace(self, export=replace(self.export, batch=1, dynamic_batch=True),
                       tolerances={**self.tolerances, "fp32": fp32})


def resolve_job(name: str, *, weights: Path | None = None, pretrained: bool = False, ema: bool = False,
                export: ExportOptions | None = None, params: RecipeParams | None = None,
                calibration: Int8Options | None = None, images: Path | None = None,
                tolerances: Iterable[str] | Mapping[str, Tolerance] = (), out: Path = DEFAULT_OUT,
                force: bool = False, num_classes: int | None = None, labels: Path | None = None) -> Job:
    """Check every input and resolve the recipe; raises UsageError in one line before any work.

    `tolerances` are `PRECISION:KEY=VALUE` strings (`--tolerance`) or an already parsed mapping. `num_classes`
    states the classifier's width (a checkpoint that disagrees is refused once read); `labels` is a labels file
    (exporter/labels.py), whose count is checked here when the class count is already known, else once the
    checkpoint is read.
    """
    check_recipe_name(name)  # an unknown name is refused before anything imports torch
    export = export or ExportOptions()
    calibration = calibration or Int8Options()
    if weights is not None:
        from effexport.exporter.checkpoint import check_weights_path

        weights = check_weights_path(Path(weights))
    spec = WeightsSpec(path=weights, pretrained=pretrained, use_ema=ema)
    if calibration.source is not None:
        _check_source(calibration.source, "--calib", arrays=True)
    if images is not None:
        _check_source(images, "--images", arrays=False)
    params = params or RecipeParams()
    if calibration.source is not None and params.calib is None:
        params = replace(params, calib=calibration.source)  # slimmable recipes re-estimate BatchNorm on it
    if calibration.heldout is not None:
        from effexport.calibration.heldout import check_heldout  # reads the files' bytes, no torch

        check_heldout(calibration.heldout, calibration.source)
    parsed = tolerances if isinstance(tolerances, Mapping) else parse_tolerances(tolerances, export.graph_io.rule)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UsageError(f"--num-classes must be a positive whole number, got {num_classes!r}")
    read = read_labels(Path(labels)) if labels is not None else None
    recipe = configure(get_recipe(name), params, img_size=export.img_size)
    if weights is not None:
        recipe = weights_preprocess(recipe, weights, export.img_size)
        from effexport.workflow.export import grey_scale_recipe  # reads the checkpoint (torch), for timm families

        recipe = grey_scale_recipe(recipe, weights, use_ema=ema)
    if recipe.preprocess.channels == 1 and export.bgr:
        raise UsageError(f"--bgr names a channel order, and {recipe.name} from {weights.name} is a grey-scale model "
                         f"(one input channel): leave --bgr out")
    if pretrained and num_classes is not None and num_classes != recipe.num_classes:
        raise UsageError(f"--pretrained gives {recipe.name}'s {recipe.num_classes}-class head, not {num_classes} "
                         f"classes; pass your fine-tuned checkpoint with --weights PATH")
    if read is not None and (num_classes is not None or weights is None):
        check_count(read, num_classes or recipe.num_classes,
                    "--num-classes" if num_classes is not None else f"{recipe.name}'s classifier")
    from effexport.exporter.onnx import check_opset, choose_exporter  # imports torch: once the recipe is known

    check_opset(export.opset, export.exporter)
    export = replace(export, exporter=choose_exporter(export.opset, export.exporter))
    check_output_root(Path(out))
    return Job(name, recipe, params, spec, export, calibration, Path(images) if images else None, dict(parsed),
               Path(out), force, num_classes, read)


def weights_preprocess(recipe: Recipe, weights: Path, img_size: int | None) -> Recipe:
    """The recipe as its weights were evaluated: a layout told by the file's suffix (PaddleClas `.pdparams`) brings
    its framework's preprocessing, and refuses an --img-size its weights do not describe."""
    layout = next((lay for lay in recipe.layouts if lay.suffix and weights.suffix == lay.suffix), None)
    if layout is None or layout.preprocess is None:
        return recipe
    native = layout.preprocess.crop_size[0]
    if layout.native_size_only and img_size not in (None, native):
        raise UsageError(f"--img-size {img_size} is refused for {layout.name} weights of {recipe.name}: "
                         f"{layout.native_size_only}; export at {native}")
    return replace(recipe, preprocess=layout.preprocess)


def parse_tolerances(items: Iterable[str], rule: str = TOP_K_RULE) -> dict[str, Tolerance]:
    """`--tolerance PRECISION:KEY=VALUE` (repeatable) -> {precision: Tolerance}, each over the default policy of
    `rule` (the output kind's: top-k, or label-set@0.5 for sigmoid)."""
    out: dict[str, Tolerance] = {}
    for item in items:
        try:
            precision, setting = item.split(":", 1)
            key, value = setting.split("=", 1)
            if precision not in POLICY or key not in TOLERANCE_KEYS:
                raise ValueError
            out[precision] = replace(out.get(precision) or tolerance_for(precision, rule=rule), **{key: float(value)})
        except ValueError:
            raise UsageError(f"--tolerance takes PRECISION:KEY=VALUE with PRECISION one of {', '.join(POLICY)} and "
                             f"KEY one of {', '.join(TOLERANCE_KEYS)}; got {item!r}") from None
    return out


def _check_source(path: Path, option: str, arrays: bool) -> None:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path} does not exist")
    if path.is_file() and not (arrays and path.suffix.lower() in (".npy", ".npz")):
        what = "a folder of images or a .npy/.npz file" if arrays else "a folder of images"
        raise UsageError(f"{option} {path} is a file; it takes {what}")
    if path.is_dir():
        from effexport.exporter.inputs import IMAGE_SUFFIXES, image_files  # PIL, not torch

        if not image_files(path):  # refused now, not after the FP32 targets were built
            raise UsageError(f"{option} {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}, searched "
                             f"recursively): point {option} at a folder of photographs")


def check_output_root(out: Path) -> None:
    """Refuse an output root that cannot be written, before any work and without creating anything."""
    probe = Path(out).absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {out} cannot be created: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".effexport-write-check-", dir=probe)
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be written ({probe}: {exc.strerror or exc}); choose another "
                         f"folder with --out") from None
    os.close(fd)
    os.unlink(tmp)
