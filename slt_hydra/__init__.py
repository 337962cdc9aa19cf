"""slt_hydra: Hydra-composed sign language translation experiments with open LLMs."""
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent

# `${slt_hydra.package_dir:}` lets YAML point at files shipped inside the package (the demo corpus).
if not OmegaConf.has_resolver("slt_hydra.package_dir"):
    OmegaConf.register_new_resolver("slt_hydra.package_dir", lambda: str(PACKAGE_DIR))
