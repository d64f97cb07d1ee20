"""Fidelity of parallel outputs against the single-device baseline (and a reference folder).

- `metrics`: PSNR, SSIM, LPIPS, FID on 8-bit RGB images;
- `backbones`: the pretrained networks LPIPS and FID need, from local weights or a download;
- `images`: a run's final latents to saved PNGs, and back;
- `score`: fill the store's `fidelity` table (each run vs its baseline, vs ground truth).

May import `suite.store` and `workloads` (the VAE that decodes latents); `suite.worlds` writes
a run's images through it.
"""
