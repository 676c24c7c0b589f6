"""What people run: the command line, the Python API, reports, heatmaps, the centre probe,
benchmarks and the environment doctor."""
