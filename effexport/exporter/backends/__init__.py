"""One module per runtime backend: each builds an artifact from the verified ONNX and runs it on NumPy."""
