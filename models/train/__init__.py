"""Training recipe of the compact denoiser (needs the ``.[train]`` extra: torch).

``python -m mica.models.train.train --out DIR`` trains, checkpoints and resumes;
``python -m mica.models.train.export`` turns a checkpoint into the weights bundle shipped in
``models/data``. See ``models/train/README.md``.
"""
