"""Pretrained networks behind LPIPS, FID and FVD, loaded from a local weights directory or downloaded.

Never an untrained stand-in: when a file is neither in the weights directory nor downloadable,
loading raises `MissingWeights` with the reason and a one-line instruction, and the metric is
stored missing with that text.

Where files are looked for, in order: the directory given by the config (`fidelity.weights_dir`)
or the CLI (`--weights-dir`), else $DIFFSCALE_WEIGHTS_DIR; then ~/.cache/diffscale/weights.
A missing file is downloaded into the first of them (unless DIFFSCALE_OFFLINE=1), so a machine
with internet fetches each file once. The files, by their upstream names:

    alexnet-owt-7be5be79.pth                   torchvision AlexNet (LPIPS backbone)
    inception-2015-12-05.pt                    clean-fid's TorchScript Inception-v3 (FID)
    weights-inception-2015-12-05-6726825d.pth  torch-fidelity Inception-v3 (torchmetrics FID)
    i3d_torchscript.pt                         StyleGAN-V's TorchScript I3D (FVD)

LPIPS's linear calibration layers (v0.1, AlexNet) ship inside torchmetrics; nothing to fetch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_DIR = "DIFFSCALE_WEIGHTS_DIR"
ENV_OFFLINE = "DIFFSCALE_OFFLINE"
CACHE_DIR = Path.home() / ".cache" / "diffscale" / "weights"


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name, as upstream publishes it
    url: str
    what: str


ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "torchvision AlexNet IMAGENET1K_V1 (LPIPS backbone)",
)
CLEANFID_INCEPTION = WeightFile(
    "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    "inception-2015-12-05.pt",
    "clean-fid TorchScript Inception-v3 (FID)",
)
TM_INCEPTION = WeightFile(
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    "torch-fidelity Inception-v3 (torchmetrics FID)",
)

I3D = WeightFile(
    "i3d_torchscript.pt",
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
    "StyleGAN-V's TorchScript of the original FVD's Kinetics-400 I3D (FVD)",
)

LPIPS_NAME = "AlexNet + LPIPS v0.1 linear layers (torchmetrics, normalize=True)"
CLEANFID_NAME = "Inception-v3 (clean-fid TorchScript, clean mode)"
TM_FID_NAME = "Inception-v3 (torch-fidelity, torchmetrics FID)"
I3D_NAME = "I3D Kinetics-400 (StyleGAN-V TorchScript, 400 logits before softmax)"


class MissingWeights(RuntimeError):
    """A pretrained network is not available; str(e) is the reason and what to do."""


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for weight files, in order (see the module docstring)."""
    first = weights_dir or os.environ.get(ENV_DIR)
    dirs = [Path(first).expanduser()] if first else []
    return [*dirs, CACHE_DIR]


def weight_file(
    wf: WeightFile, weights_dir: str | Path | None = None, allow_download: bool | None = None
) -> Path:
    """Path of `wf` on disk: found in a search directory, or downloaded into the first one."""
    dirs = search_dirs(weights_dir)
    for d in dirs:
        if (d / wf.name).is_file():
            return d / wf.name
    if allow_download is None:
        allow_download = os.environ.get(ENV_OFFLINE, "") in ("", "0")
    where = ", ".join(str(d) for d in dirs)
    hint = f"put {wf.name} ({wf.what}, from {wf.url}) in ${ENV_DIR}"
    if not allow_download:
        raise MissingWeights(f"{wf.name} not found in {where} (downloads off); {hint}")
    target = dirs[0] / wf.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(wf.url, str(target), progress=False)
    except Exception as e:  # no network, no DNS, proxy refusal, read-only dir: all mean missing
        reason = " ".join(str(e).split())[:160]
        raise MissingWeights(
            f"{wf.name} not found in {where}; download failed ({type(e).__name__}: {reason}); "
            f"{hint}"
        ) from None
    return target


def lpips_net(weights_dir: str | Path | None = None, allow_download: bool | None = None):
    """torchmetrics' LPIPS module (AlexNet, v0.1 linear layers) with local AlexNet weights.

    Built with a random backbone (no download at construction) whose convolutions are then
    overwritten from the AlexNet file, strictly: every backbone parameter must be loaded.
    """
    from torchmetrics.functional.image.lpips import _LPIPS

    path = weight_file(ALEXNET, weights_dir, allow_download)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()
    loaded = 0
    for slice_ in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
        for index, layer in slice_.named_children():
            for pname, param in layer.named_parameters():
                param.data.copy_(state[f"features.{index}.{pname}"])
                loaded += 1
    if loaded != 10:  # 5 convolutions x (weight, bias)
        raise MissingWeights(f"{path} does not hold torchvision's AlexNet features ({loaded}/10)")
    return net.requires_grad_(False)


def cleanfid_inception(weights_dir: str | Path | None = None, allow_download: bool | None = None):
    """clean-fid's TorchScript Inception-v3: (N, 3, 299, 299) in [0, 255] -> (N, 2048)."""
    from cleanfid.inception_torchscript import InceptionV3W

    path = weight_file(CLEANFID_INCEPTION, weights_dir, allow_download)
    return InceptionV3W(str(path.parent), download=False, resize_inside=False).eval()


def torchmetrics_fid(weights_dir: str | Path | None = None, allow_download: bool | None = None):
    """A fresh torchmetrics FrechetInceptionDistance (2048 features, inputs in [0, 1])."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MissingWeights(
            "torch-fidelity is not installed (torchmetrics' FID Inception lives there); "
            "pip install torch-fidelity"
        ) from None
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = weight_file(TM_INCEPTION, weights_dir, allow_download)
    return FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=str(path)
    )


class I3DFeatures:
    """StyleGAN-V's TorchScript I3D as an FVD feature extractor: (N, 3, T, 224, 224) videos in
    [-1, 1] -> (N, 400) logits before the softmax (its own rescale and resize switched off, as
    StyleGAN-V computes FVD: the frames are resized before)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        return self.module(videos, rescale=False, resize=False, return_features=True)


def i3d_net(weights_dir: str | Path | None = None, allow_download: bool | None = None):
    """The FVD backbone (I3DFeatures) from i3d_torchscript.pt in the weights directories."""
    path = weight_file(I3D, weights_dir, allow_download)
    return I3DFeatures(torch.jit.load(str(path), map_location="cpu").eval())
