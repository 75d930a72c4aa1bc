"""Pure signal processing for microphone arrays (no I/O, threads, logging or config).

Conventions: a block is ``(n_ch, n_samples)`` float32 in [-1, 1]; a spectrum frame is
``(n_ch, n_bins)`` complex64; geometry is ``(n_ch, 3)`` in metres.
"""
