"""Data-scaling studies: sweeps over model x data x length (grid, runner, record) and their analysis (table, fits,
analyze, plots)."""

from mimkit.scaling.analyze import analyze_table
from mimkit.scaling.fits import fit_power_law
from mimkit.scaling.grid import load_sweep
from mimkit.scaling.sweep import collect, run_sweep

__all__ = ["analyze_table", "collect", "fit_power_law", "load_sweep", "run_sweep"]
