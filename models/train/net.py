"""The denoiser network in torch (the training side of :mod:`mica.models.gru`).

``features (B, T, n_in)`` -> ``Linear + tanh`` -> ``GRU`` -> ``GRU`` -> ``Linear(h1 ++ h2) +
sigmoid`` -> band gains ``(B, T, n_bands)``. Gate layout and equations are torch's
``nn.GRU`` (reset gate applied to ``W_hn h + b_hn``), which the Numba kernel reproduces.
"""

from __future__ import annotations

import torch
from torch import nn


class BandGainNet(nn.Module):
    def __init__(self, n_in: int, n_bands: int = 32, n_dense: int = 64, n_hidden: int = 80):
        super().__init__()
        self.n_in, self.n_bands, self.n_dense, self.n_hidden = n_in, n_bands, n_dense, n_hidden
        self.dense = nn.Linear(n_in, n_dense)
        self.gru1 = nn.GRU(n_dense, n_hidden, batch_first=True)
        self.gru2 = nn.GRU(n_hidden, n_hidden, batch_first=True)
        self.out = nn.Linear(2 * n_hidden, n_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.tanh(self.dense(x))
        h1, _ = self.gru1(d)
        h2, _ = self.gru2(h1)
        return torch.sigmoid(self.out(torch.cat([h1, h2], dim=-1)))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def to_arrays(self) -> dict[str, object]:
        """Weights as float32 numpy arrays under the bundle's names."""
        sd = {k: v.detach().cpu().numpy().astype("float32") for k, v in self.state_dict().items()}
        return {
            "dense_w": sd["dense.weight"], "dense_b": sd["dense.bias"],
            "gru1_wi": sd["gru1.weight_ih_l0"], "gru1_wh": sd["gru1.weight_hh_l0"],
            "gru1_bi": sd["gru1.bias_ih_l0"], "gru1_bh": sd["gru1.bias_hh_l0"],
            "gru2_wi": sd["gru2.weight_ih_l0"], "gru2_wh": sd["gru2.weight_hh_l0"],
            "gru2_bi": sd["gru2.bias_ih_l0"], "gru2_bh": sd["gru2.bias_hh_l0"],
            "out_w": sd["out.weight"], "out_b": sd["out.bias"],
        }
