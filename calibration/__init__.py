"""Board profiles, measurement procedures and the calibration file format."""
