"""Calibration data and INT8. The built-in photographs live in images/ (licences in images/LICENSES.md)."""
