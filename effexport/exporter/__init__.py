"""Export stages: rewrites, checkpoints, ONNX, parity, inputs, backends and the pipeline that joins them."""
