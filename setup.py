from setuptools import find_packages, setup

setup(
    name="laser",
    version="0.1.0",
    description="Language-guided 3D segmentation in NeRFs: Laser, LERF and 3D-OVS on TensoRF and hash grids",
    packages=find_packages(include=["laser", "laser.*"]),
    python_requires=">=3.10",
    # torch and torchvision are pinned exactly: any looser range pulls a multi-GB CUDA build on CPU machines.
    install_requires=[
        "torch==2.13.0",
        "torchvision==0.28.0",
        "open_clip_torch>=3.0",
        "timm>=1.0",              # DINO ViTs (also an open_clip dependency)
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "wandb>=0.17",
        "imageio>=2.30",
        "numpy>=1.24",
        "pillow>=10.0",
        "tqdm>=4.60",
        "viser>=1.0",             # python -m laser.viewer
        "plyfile>=1.0",           # python -m laser.export, nerfstudio point clouds
        "pycolmap>=3.12",         # scene=colmap (COLMAP's .bin / .txt models)
        "contourpy>=1.2",         # the synthetic 360° scene's LERF-OVS polygons
    ],
    extras_require={
        # imageio[ffmpeg] and selenium: the video and the viewer's browser tests (Chromium itself is Debian's).
        "test": ["pytest>=8.0", "scikit-learn>=1.3", "ruff>=0.5", "imageio[ffmpeg]", "selenium>=4.10"],
        "video": ["imageio[ffmpeg]"],
        "slurm": ["hydra-submitit-launcher>=1.2"],
    },
)
