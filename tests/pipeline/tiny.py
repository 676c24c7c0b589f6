"""The smallest settings that still exercise the real pipeline end to end."""

import subprocess
import sys

TINY_SYNTHETIC = ["--set", "data.options={centres: 2, slides_per_centre: 2, slide_size: 384, regions: 3}"]
TINY_ANY_DATASET = [
    "--device", "cpu",
    "--image-size", "32",
    "--batch-size", "8",
    "--quiet",
    "--set", "data.max_per_slide=12",
    "--set", "output.tensorboard=false",
    "--set", "sassl.hidden_dim=32",
    "--set", "ssl.options={proj_dim: 32, proj_hidden_dim: 64}",
]
TINY = [*TINY_ANY_DATASET, *TINY_SYNTHETIC]


def sassl(*args, check=True):
    """Run the real console entry point in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "sassl_core.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"sassl {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
