"""Slimmable networks (MutualNet, US-Nets): slicing to a width, BatchNorm re-estimation, the exported static network
against the slimmable one, checkpoints in the original layout, and choosing a point under a MAC budget."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from effexport.backends.onnxruntime import OrtRunner
from effexport.calibration.options import Int8Options
from effexport.errors import UsageError
from effexport.exporter.checkpoint import randomize_batchnorm
from effexport.exporter.inputs import BUILTIN_DIR, image_files, parity_inputs, preprocess_images, read_images
from effexport.exporter.profile import build_on_meta, count_macs
from effexport.recipes import RecipeParams, configure, get_recipe
from effexport.recipes._slimmable import (
    SLIMMABLE,
    USBatchNorm2d,
    mobilenet_v1,
    mobilenet_v2,
    recalibrate_batchnorm,
    set_width,
    slice_to_width,
    slim_channels,
)
from effexport.recipes.mutualnet import IMAGENET, VARIANTS, calibration_batches, reestimate_batchnorm
from effexport.workflow.export import export_recipe, finalize_images
from effexport.workflow.job import resolve_job
from tests.test_cli import run

TRAINED_WIDTHS = (0.35, 0.7, 1.0)  # the widths whose statistics an original checkpoint keeps as bn.0, bn.1, ...


def _slimmable(arch, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = arch().eval()
    randomize_batchnorm(model, seed=seed + 1)
    return model


def original_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s full-width state dict as the original USBatchNorm2d stores it: affine parameters only, and
    statistics per trained width in a ModuleList `bn` (random values: they must not be used)."""
    gen = torch.Generator().manual_seed(9)
    out = {}
    bns = {name: m for name, m in model.named_modules() if isinstance(m, USBatchNorm2d)}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner not in bns:
            out[key] = value
        elif leaf in ("weight", "bias"):
            out[key] = value
            if leaf == "bias":
                for i, width in enumerate(TRAINED_WIDTHS):
                    c = slim_channels(bns[owner].num_features, width, bns[owner].ratio)
                    out[f"{owner}.bn.{i}.running_mean"] = torch.randn(c, generator=gen)
                    out[f"{owner}.bn.{i}.running_var"] = torch.rand(c, generator=gen) + 0.5
                    out[f"{owner}.bn.{i}.num_batches_tracked"] = torch.tensor(1000)
    return out


@pytest.mark.parametrize("arch", [mobilenet_v1, mobilenet_v2])
@pytest.mark.parametrize("width", [1.0, 0.85, 0.5, 0.35])
def test_sliced_network_computes_the_slimmable_network_at_that_width(arch, width):
    slim = set_width(_slimmable(arch), width)
    static = slice_to_width(slim, width)
    assert not any(isinstance(m, SLIMMABLE) for m in static.modules())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(static(x), slim(x))
    first = static.features[0][0]
    assert first.out_channels == slim_channels(32, width) and isinstance(first, nn.Conv2d)


def test_batchnorm_reestimation_is_a_cumulative_average_over_the_batches():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.3)).eval()
    model[1].running_mean.fill_(5.0)
    batches = [torch.randn(4, 3, 8, 8) * s + s for s in (1.0, 2.0, 3.0)]
    assert recalibrate_batchnorm(model, batches) == 1
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == 0.3 and not model[1].training and not model.training


def _calib_dir(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for path in image_files(BUILTIN_DIR)[:6]:
        shutil.copy(path, calib / path.name)
    return calib


@pytest.mark.parametrize("name, width, resolution", [
    ("mutualnet_mobilenet_v2", 0.85, 160),
    ("mutualnet_mobilenet_v2", 0.7, 128),
    ("mutualnet_mobilenet_v1", 0.25, 96),
    ("usnet_mobilenet_v2", 0.35, 112),
])
def test_sliced_and_recalibrated_export_matches_the_slimmable_model(name, width, resolution, tmp_path):
    slim = _slimmable(VARIANTS[name].arch)
    ckpt = tmp_path / "us.pt"
    state = {f"module.{k}": v for k, v in original_layout(slim).items()}
    torch.save({"model": state, "optimizer": {"state": {}}, "last_epoch": 249}, ckpt)
    calib = _calib_dir(tmp_path)

    job = resolve_job(name, weights=ckpt, params=RecipeParams(width=width, resolution=resolution),
                      calibration=Int8Options(source=calib), out=tmp_path / "out")
    assert job.params.calib == calib  # the BatchNorm re-estimation images come from the calibration source
    result = export_recipe(job)
    report = result.report
    assert report["weights"]["layout"].startswith("original US-Net layout")
    assert report["weights"]["finalized"]["images"] == 6 and "warning" not in report["weights"]["finalized"]
    assert report["configuration"]["width"] == width and report["inputs"][0]["shape"] == [1, 3, resolution, resolution]
    assert result.path.parent.parent.name == f"{name}-w{width:g}-r{resolution}"  # the point names the model folder
    assert result.path.parent.name == "onnx-b1"  # the resolution is the point's own, not an --img-size variant

    # The reference: the slimmable network itself at this width, its statistics re-estimated the same way.
    pp = IMAGENET.at(resolution)
    inputs, _ = parity_inputs(pp)
    with torch.no_grad():
        stale = set_width(slim, width)(torch.from_numpy(inputs)).numpy()
    recalibrate_batchnorm(slim, calibration_batches(preprocess_images(read_images(image_files(calib)).images, pp)))
    with torch.no_grad():
        expected = slim(torch.from_numpy(inputs)).numpy()
    with OrtRunner(result.path) as runner:
        got = runner.run(inputs)
    span = expected.max() - expected.min()
    assert np.abs(got - expected).max() / span < 1e-4
    assert np.abs(stale - expected).max() / span > 1e-2  # re-estimation really changed the statistics


def _npz_of(calib, resolution: int, path):
    """The photographs of `calib`, preprocessed at `resolution` as the recipe does, saved as a .npz."""
    np.savez(path, input=preprocess_images(read_images(image_files(calib)).images, IMAGENET.at(resolution)))
    return path


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [t for m in model.modules() if isinstance(m, nn.BatchNorm2d) for t in (m.running_mean, m.running_var)]


def test_reestimation_reads_a_folder_or_an_npz_through_the_calibration_loader(tmp_path):
    calib = _calib_dir(tmp_path)
    npz = _npz_of(calib, 64, tmp_path / "calib.npz")
    from_folder = slice_to_width(_slimmable(mobilenet_v2), 0.7)
    from_npz = copy.deepcopy(from_folder)
    stale = [t.clone() for t in _bn_stats(from_folder)]
    _, folder_record = reestimate_batchnorm(64, calib, from_folder, finalize_images)
    _, npz_record = reestimate_batchnorm(64, npz, from_npz, finalize_images)
    assert folder_record["images"] == npz_record["images"] == 6 and npz_record["source"] == str(npz)
    assert "warning" not in folder_record and "warning" not in npz_record
    for a, b, old in zip(_bn_stats(from_folder), _bn_stats(from_npz), stale, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert not torch.equal(a, old)


def test_reestimation_refuses_an_array_preprocessed_at_another_resolution(tmp_path):
    npz = _npz_of(_calib_dir(tmp_path), 96, tmp_path / "calib.npz")
    with pytest.raises(UsageError, match=r"preprocessed at 96x96, but the model takes 64x64 .*--resolution"):
        reestimate_batchnorm(64, npz, slice_to_width(_slimmable(mobilenet_v2), 0.7), finalize_images)


def test_reestimation_warns_about_degenerate_calibration_images(tmp_path):
    calib = _calib_dir(tmp_path)
    Image.new("RGB", (4, 4)).save(calib / "dot.png")
    _, record = reestimate_batchnorm(64, calib, slice_to_width(_slimmable(mobilenet_v2), 0.7), finalize_images)
    assert record["images"] == 7 and "dot.png (4x4)" in record["warning"]


def test_cli_export_with_npz_calib(capsys, tmp_path):
    npz = _npz_of(_calib_dir(tmp_path), 64, tmp_path / "c.npz")
    args = ["onnx", "mutualnet_mobilenet_v2", "--width", "0.7", "--resolution", "64", "--out", str(tmp_path / "out")]
    code, _, err = run([*args, "--calib", str(npz)], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "mutualnet_mobilenet_v2-w0.7-r64" / "onnx-b1" / "report.json")
                        .read_text())
    assert report["weights"]["finalized"]["source"] == str(npz) and report["weights"]["finalized"]["images"] == 6
    code, _, err = run([*args, "--resolution", "96", "--calib", str(npz), "--force"], capsys)
    assert code == 2 and err.startswith("error:") and "preprocessed at 64x64, but the model takes 96x96" in err


def test_the_published_query_tables_are_the_macs_of_their_points():
    for name in ("mutualnet_mobilenet_v1", "mutualnet_mobilenet_v2"):
        for point in VARIANTS[name].query:
            recipe = configure(get_recipe(name), RecipeParams(width=point.width, resolution=point.resolution))
            macs = count_macs(build_on_meta(recipe.build), recipe.input_size) / 1e6
            assert abs(macs - point.mflops) <= max(1.0, 0.01 * point.mflops), (name, point, macs)


def test_budget_picks_the_most_accurate_point_that_fits(tmp_path):
    def chosen(**kw):
        recipe = configure(get_recipe("mutualnet_mobilenet_v2"), RecipeParams(**kw))
        return recipe.configuration["width"], recipe.configuration["resolution"]

    assert chosen(budget_mflops=200) == (0.9, 192)
    assert chosen(budget_mflops=300) == (1.0, 224)
    assert chosen(budget_mflops=57) == (0.7, 128)
    assert chosen() == (1.0, 224)
    table = tmp_path / "mine.csv"
    table.write_text("mflops,width,resolution,top1\n150,0.8,160,80.5\n190,0.75,192,79.0\n250,1.0,160,81.0\n")
    assert chosen(budget_mflops=200, query_table=table) == (0.8, 160)
    with pytest.raises(UsageError, match="no point of the query table fits 56"):
        chosen(budget_mflops=56)
    with pytest.raises(UsageError, match="either --budget-mflops or --width"):
        chosen(budget_mflops=200, width=0.8)
    with pytest.raises(UsageError, match="outside the range"):
        chosen(width=0.5)
    with pytest.raises(UsageError, match="only with --budget-mflops"):
        chosen(query_table=table)
    (tmp_path / "bad.csv").write_text("flops,w\n1,2\n")
    with pytest.raises(UsageError, match="columns mflops,width,resolution,top1"):
        chosen(budget_mflops=200, query_table=tmp_path / "bad.csv")
    with pytest.raises(UsageError, match="no query table is published for usnet_mobilenet_v2"):
        configure(get_recipe("usnet_mobilenet_v2"), RecipeParams(budget_mflops=200))


def test_options_are_refused_by_recipes_that_do_not_take_them():
    with pytest.raises(UsageError, match="takes no --width, --budget-mflops option"):
        configure(get_recipe("rexnet_1.0"), RecipeParams(width=0.5, budget_mflops=100))
    assert configure(get_recipe("rexnet_1.0"), RecipeParams(calib=BUILTIN_DIR)) is get_recipe("rexnet_1.0")
    with pytest.raises(UsageError, match="--resolution R"):
        configure(get_recipe("mutualnet_mobilenet_v1"), RecipeParams(), img_size=160)


def test_cli_budget_export_and_info(capsys, tmp_path):
    code, out, err = run(["onnx", "mutualnet_mobilenet_v2", "--budget-mflops", "200", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "mutualnet_mobilenet_v2-w0.9-r192" / "onnx-b1" / "model.onnx").is_file()
    assert "built-in photographs" in err and "cost accuracy" in err
    code, out, _ = run(["info", "mutualnet_mobilenet_v2", "--budget-mflops", "200", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["configuration"]["query_point"]["mflops"] == 198 and abs(info["macs"] / 1e6 - 198) < 1
    for args in (["onnx", "rexnet_1.0", "--width", "0.5"], ["info", "ghostnet_pfd", "--budget-mflops", "100"],
                 ["onnx", "mutualnet_mobilenet_v2", "--width", "0.5", "--out", str(tmp_path)]):
        code, _, err = run(args, capsys)
        assert code == 2 and err.startswith("error:"), (args, err)
