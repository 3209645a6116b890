"""The workflow: one module per command over a resolved Job (job.py), joining the stages below it.

export (ONNX), deploy (backend artifacts, INT8 through calibration), verify, bench (+ bench_chart), build (the build
file's matrix), merge, layouts (Triton and OpenVINO Model Server repositories), info, reference (cached PyTorch
outputs). The CLI and the Python API call one function here per command; nothing here prints.
"""
