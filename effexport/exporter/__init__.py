"""The core stages: rewrites, checkpoints (+ upstream layouts), ONNX, parity, inputs, atomic artifacts, MACs and the
timing harness. Nothing here imports a recipe, a backend, calibration or the workflow above it."""
