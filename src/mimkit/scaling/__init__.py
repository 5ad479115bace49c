"""Data-scaling studies: sweeps over model x data x length (grid, runner, record) and their analysis (table, fits,
analyze, plots)."""

from mimkit.lazy import lazy_exports

# numpy, torch and matplotlib load with the first of these that is read (see mimkit/lazy.py)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "analyze_table": "mimkit.scaling.analyze",
        "fit_power_law": "mimkit.scaling.fits",
        "kept_table": "mimkit.scaling.kept",
        "load_sweep": "mimkit.scaling.grid",
        "collect": "mimkit.scaling.sweep",
        "run_sweep": "mimkit.scaling.sweep",
    },
)

__all__ = ["analyze_table", "collect", "fit_power_law", "kept_table", "load_sweep", "run_sweep"]
