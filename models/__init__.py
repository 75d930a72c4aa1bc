"""The compact denoiser (weights bundle, Numba inference, statistical fallback, training recipe)."""
