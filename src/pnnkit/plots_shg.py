"""Figures specific to the SHG lab (issue 3): twin error per output bin, and one vowel's spectra layer by layer.

Called by :func:`pnnkit.experiments.run_experiment` when the system is an SHG lab (``spec.name`` starts with
``"shg"``). Writes ``twin_error_per_bin.png`` and ``shg_spectra_<method>.png`` into the output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .layers import PhysicalLayer, physical_layers, using_mode  # noqa: E402


def plot_twin_error_per_bin(twin: dict[str, Any], path: Path) -> Path | None:
    """Bar chart of the twin's validation NRMSE per spectrometer bin (noise floor as a line, if known)."""
    per = twin.get("val_nrmse_per_output")
    if not per:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.bar(np.arange(len(per)), per, color="tab:blue", label=f"{twin.get('kind')} twin, validation")
    if twin.get("noise_floor_nrmse") is not None:
        ax.axhline(twin["noise_floor_nrmse"], color="k", ls="--", lw=1, label="measurement-noise floor (pooled)")
    ax.set(xlabel="spectrometer bin", ylabel="NRMSE (RMSE / std of the bin)",
           title=f"twin error per output bin (pooled {twin.get('val_nrmse', float('nan')):.3f})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def layer_spectra(model: nn.Module, x: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """Run ``x`` (one sample, shape (1, features)) through ``model`` on the lab; per physical layer return the
    pixel values (inputs and θ), the shaped fundamental power |A|² per pixel, the SH power |B|² per SH sample
    (noise-free, this unit's defects in) and the measured spectrometer bins."""
    captured: list[dict[str, np.ndarray]] = []

    def hook(layer: PhysicalLayer, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        lab = layer.system
        xc, th = layer.constrain_input(inp[0]), layer.params()
        a = lab.shaped_field(xc, th)  # type: ignore[attr-defined]
        b = lab.sh_field(xc, th)  # type: ignore[attr-defined]
        captured.append({
            "x": xc[0].numpy(), "theta": th["theta"].reshape(-1).numpy(),
            "fundamental": a.abs().pow(2)[0].numpy(), "sh": b.abs().pow(2)[0].numpy(),
            "bins": out[0].numpy(),
        })

    handles = [m.register_forward_hook(hook) for m in physical_layers(model)]
    try:
        with using_mode(model, "physical"):
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return captured


def plot_layer_spectra(model: nn.Module, system: Any, x: torch.Tensor, label: str, path: Path) -> Path | None:
    """One sample's input spectrum → SH spectrum for every physical layer (rows), measured on the lab."""
    layers = layer_spectra(model, x)
    if not layers:
        return None
    meta = system.spec.meta
    in_pix, par_pix = np.asarray(meta["input_pixels"]), np.asarray(meta["param_pixels"])
    design = system.design
    lam0 = float(meta["wavelength_nm"])
    c = 299.792458
    lam_f = lam0 - design.u * lam0**2 / (2 * np.pi * c)  # fundamental wavelength of each pixel (nm)
    lam_sh = lam0 / 2 - design.w * (lam0 / 2) ** 2 / (2 * np.pi * c)  # SH wavelength of each sample (nm)
    edges = lam0 / 2 - design.edges * (lam0 / 2) ** 2 / (2 * np.pi * c)
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, 2.6 * len(layers)), squeeze=False)
    for i, L in enumerate(layers):
        a1, a2 = axes[i]
        a1.bar(lam_f[in_pix], L["fundamental"][in_pix], width=0.2, color="tab:orange", label="input pixels")
        a1.bar(lam_f[par_pix], L["fundamental"][par_pix], width=0.2, color="tab:gray", label="θ pixels")
        a1.set(ylabel=f"layer {i + 1}\n|A|² (shaped)", xlabel="fundamental wavelength (nm)" if i == len(layers) - 1 else None)
        a2.plot(lam_sh, L["sh"] / max(L["sh"].max(), 1e-30), color="tab:purple", lw=1, label="|B|² (noise-free, normalised)")
        ax2 = a2.twinx()
        centres = (edges[:-1] + edges[1:]) / 2
        ax2.bar(centres, L["bins"], width=0.8 * abs(edges[1] - edges[0]), alpha=0.35, color="tab:green",
                label="measured bins")
        ax2.set_ylabel("bin output (P/P_ref)")
        a2.set(xlim=(edges.min() - 0.5, edges.max() + 0.5),
               xlabel="SH wavelength (nm)" if i == len(layers) - 1 else None)
        if i == 0:
            a1.legend(fontsize=7)
            a2.legend(fontsize=7, loc="upper left")
            ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_shg(results: dict[str, Any], models: dict[str, nn.Module], system: Any, task: Any, out: Path) -> list[Path]:
    """The SHG-specific figures of an experiment (twin error per bin; one test vowel through each network)."""
    paths: list[Path] = []
    if results.get("twin"):
        p = plot_twin_error_per_bin(results["twin"], out / "twin_error_per_bin.png")
        if p:
            paths.append(p)
    if not hasattr(system, "shaped_field") or len(task.x_test) == 0:
        return paths
    x, y = task.x_test[:1], int(task.y_test[0])
    for method, model in models.items():
        label = (f"{method}: test token 0, vowel '{task.classes[y]}' — input spectrum → SH spectrum per layer "
                 f"(unit {results.get('unit')})")
        p = plot_layer_spectra(model, system, x, label, out / f"shg_spectra_{method}.png")
        if p:
            paths.append(p)
    return paths
