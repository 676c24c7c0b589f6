"""The smallest settings that still exercise the real pipeline end to end."""

from tests.fixtures.cli_runs import CliResult, cli

TINY_SYNTHETIC = ["--set", "data.options={centres: 2, slides_per_centre: 2, slide_size: 384, regions: 3}"]
TINY_ANY_DATASET = [
    "--device",
    "cpu",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--quiet",
    "--set",
    "data.max_per_slide=12",
    "--set",
    "output.tensorboard=false",
    "--set",
    "sassl.hidden_dim=32",
    "--set",
    "ssl.options={proj_dim: 32, proj_hidden_dim: 64}",
]
TINY = [*TINY_ANY_DATASET, *TINY_SYNTHETIC]


def sassl(*args, check=True) -> CliResult:
    """Run the real command line (``sassl_core.app.cli.main``) in this process: the same code path
    as the console script, without paying the torch/timm import for every run."""
    result = cli(*args)
    if check and result.status != 0:
        raise AssertionError(f"sassl {' '.join(map(str, args))} failed ({result.status}):\n{result.err[-3000:]}")
    return result
