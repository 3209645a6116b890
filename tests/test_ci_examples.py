"""The CI examples in examples/ci/: the GitHub Actions workflow and the GitLab CI pipeline validate against the
schemas vendored in check-jsonschema (offline), the build file they use loads, and every `effexport` command line
in them uses a subcommand and flags the CLI has, and merges exactly the folders the build jobs produce."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from effexport.workflow.build import load_plan

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
BUILD_FILE = CI / "effexport.toml"

# The flags of `effexport build` and `effexport merge` the examples may use, and which of them take a value.
FLAGS = {
    "build": {"--out", "--shard", "--only", "--layout", "--dry-run", "--fail-fast", "--force"},
    "merge": {"--out", "--layout"},
}
TAKES_VALUE = {"--out", "--shard", "--only", "--layout"}
BACKENDS = {"onnx", "onnxruntime", "openvino", "tensorrt"}
LAYOUTS = {"triton", "ovms"}
EXPR = "EXPR"  # what a GitHub `${{ ... }}` expression becomes before the line is split


def _load(path: Path):
    # YAML 1.2 (ruamel), as the CI services read it: PyYAML would turn the workflow's `on:` key into True
    return YAML(typ="safe", pure=True).load(path.read_text())


def _command_lines(scripts: list[str]) -> list[list[str]]:
    """Every `effexport ...` command in shell snippets, split into argv (continuation lines joined)."""
    commands = []
    for script in scripts:
        for line in re.sub(r"\\\n", " ", script).splitlines():
            line = re.sub(r"\$\{\{[^}]*\}\}", EXPR, line).strip()
            if line.startswith("effexport "):
                commands.append(shlex.split(line))
    return commands


def _github_scripts(workflow: dict) -> dict[str, list[str]]:
    return {name: [step["run"] for step in job.get("steps", []) if "run" in step]
            for name, job in workflow["jobs"].items()}


def _gitlab_scripts(pipeline: dict) -> dict[str, list[str]]:
    return {name: [line for key in ("before_script", "script", "after_script") for line in job.get(key, [])]
            for name, job in pipeline.items() if isinstance(job, dict) and ("script" in job or "before_script" in job)}


def _parse(argv: list[str]) -> tuple[str, dict[str, str | bool], list[str]]:
    """(subcommand, flags, positional arguments) of one effexport command line; fails on an unknown flag."""
    assert argv[0] == "effexport" and len(argv) > 1, argv
    sub = argv[1]
    assert sub in FLAGS, f"unknown subcommand in {shlex.join(argv)}"
    flags: dict[str, str | bool] = {}
    positional = []
    rest = iter(argv[2:])
    for arg in rest:
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        assert name in FLAGS[sub], f"effexport {sub} has no {name} (in {shlex.join(argv)})"
        if name in TAKES_VALUE:
            value = value if eq else next(rest, None)
            assert value and not value.startswith("-"), f"{name} needs a value (in {shlex.join(argv)})"
            flags[name] = value
        else:
            assert not eq, f"{name} takes no value (in {shlex.join(argv)})"
            flags[name] = True
    assert "--out" in flags, f"no --out in {shlex.join(argv)}"
    if sub == "build":
        assert positional == ["effexport.toml"], positional
        assert "--shard" not in flags or re.fullmatch(r"(\d+|EXPR|\$\w+)/(\d+|\$\w+)", flags["--shard"]), flags
        assert set(flags.get("--only", "tensorrt").split(",")) <= BACKENDS, flags  # comma-separated backends
    else:
        assert len(positional) >= 2, f"merge needs at least two folders (in {shlex.join(argv)})"
    assert flags.get("--layout", "triton") in LAYOUTS, flags
    return sub, flags, positional


def _commands(scripts: dict[str, list[str]]) -> dict[str, list[tuple[str, dict, list[str]]]]:
    return {job: [_parse(argv) for argv in _command_lines(lines)] for job, lines in scripts.items()}


@pytest.mark.parametrize("path,schema", [(GITHUB, "vendor.github-workflows"), (GITLAB, "vendor.gitlab-ci")])
def test_ci_file_matches_the_vendored_schema(path, schema):
    # the schema is the copy shipped inside check-jsonschema: nothing is downloaded
    run = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_build_file_loads_with_three_models(tmp_path):
    plan = load_plan(BUILD_FILE, out=tmp_path)
    assert list(dict.fromkeys(t.model for t in plan.targets)) == ["rexnet", "lite0", "mnv3"]
    assert {t.job.recipe.name for t in plan.targets} == {"rexnet_1.0", "efficientnet_lite0", "mobilenetv3_large_pfd"}
    assert {t.name for t in plan.targets} == {"onnx", "onnx-dynamic", "openvino-fp32", "openvino-int8",
                                             "onnxruntime-int8", "tensorrt-fp16"}
    assert all(t.trt == {"min_batch": 1, "opt_batch": 8, "max_batch": 32} for t in plan.targets)


def test_github_commands_parse_and_merge_what_the_jobs_upload():
    workflow = _load(GITHUB)
    jobs = workflow["jobs"]
    commands = _commands(_github_scripts(workflow))
    [(_, shard_flags, _)] = commands["shards"]
    matrix = jobs["shards"]["strategy"]["matrix"]["shard"]
    assert matrix == [1, 2, 3] and shard_flags["--shard"] == f"{EXPR}/{len(matrix)}"
    [(_, trt_flags, _)] = commands["tensorrt"]
    assert trt_flags["--only"] == "tensorrt" and jobs["tensorrt"]["runs-on"] == ["self-hosted", "gpu"]
    [(sub, merge_flags, inputs)] = commands["merge"]
    assert sub == "merge" and merge_flags == {"--out": "release", "--layout": "triton"}
    assert jobs["merge"]["needs"] == ["shards", "tensorrt"]

    def uses(job, action):
        return [s["with"] for s in jobs[job]["steps"] if s.get("uses", "").startswith(action)]

    upload = "actions/upload-artifact@v4"
    names = [w["name"].replace("${{ matrix.shard }}", str(k)) for k in matrix for w in uses("shards", upload)]
    names += [w["name"] for w in uses("tensorrt", upload)]
    [download] = uses("merge", "actions/download-artifact@v4")
    assert download["merge-multiple"] is False and all(re.fullmatch(r"effexport-.*", n) for n in names)
    # without merge-multiple each artifact lands in <path>/<artifact name>/
    assert inputs == [f"{download['path']}/{n}" for n in names]
    assert uses("merge", upload)[0]["path"] == "release/"


def test_gitlab_commands_parse_and_merge_what_the_jobs_keep():
    pipeline = _load(GITLAB)
    commands = _commands(_gitlab_scripts(pipeline))
    [(_, shard_flags, _)] = commands["shards"]
    assert pipeline["shards"]["parallel"] == 3
    assert shard_flags["--shard"] == "$CI_NODE_INDEX/$CI_NODE_TOTAL"
    assert shard_flags["--out"] == "build/shard-$CI_NODE_INDEX"
    [(_, trt_flags, _)] = commands["tensorrt"]
    assert trt_flags["--only"] == "tensorrt" and pipeline["tensorrt"]["tags"] == ["gpu"]
    [(sub, merge_flags, inputs)] = commands["merge"]
    assert sub == "merge" and merge_flags == {"--out": "release", "--layout": "triton"}
    assert pipeline["merge"]["needs"] == ["shards", "tensorrt"]
    # artifacts keep their paths inside the project, so merge reads exactly the folders the build jobs keep
    kept = [p.replace("$CI_NODE_INDEX", str(k)).rstrip("/") for k in range(1, 4)
            for p in pipeline["shards"]["artifacts"]["paths"]]
    kept += [p.rstrip("/") for p in pipeline["tensorrt"]["artifacts"]["paths"]]
    assert inputs == kept
    assert pipeline["merge"]["artifacts"]["paths"] == ["release/"]
