"""Calibration data and INT8. The built-in photographs live in images/ (licences in images/LICENSES.md).

Library entry points (the workflow in effexport.workflow.deploy calls these):
- `options.Int8Options(source=..., method=..., calib_size=..., seed=...)`: what one calibration is made of.
- `int8.ensure_int8(recipe, fp32_path, preprocess, options, dest, cache_dir, tolerance=..., enforce=...)`: calibrate
  once (cached), build every INT8 form into `dest`, check and verify them -> Int8Result; `enforce` names the forms
  whose INT8 parity failure is an error (None: all); a failing build goes to `dest/rejected/`.
- `int8.form_for_backend(backend)`: which of Int8Result.files a backend runs.
- `int8.int8_parity(reference, path, inputs)`: INT8 parity under tolerance_for("int8").
- `effexport.backends.tensorrt_qdq.check_tensorrt_qdq(path)`: TensorRT's QDQ rules (zero points 0, per-tensor
  activations, per-output-channel weights), which live with the TensorRT backend and are asked there.
- `data.load_calibration(source, preprocess, size, seed)`: calibration inputs and their manifest.
- `heldout.heldout_inputs(preprocess)`: the shipped held-out photographs (heldout/, licences in heldout/LICENSES.md),
  never used for calibration, for judging INT8.
- `heldout.int8_parity_inputs(preprocess, images, data_manifest)`: the photographs every INT8 parity check uses.

The commands reach all of this through `effexport.workflow.deploy`: `Context.int8_build()` calibrates once into
`<out>/<model>/int8-<method>/` and `ensure_artifact(ctx, backend, "int8")` turns the backend's form into
`<backend>-int8/`.
"""
