"""Runs of the steps: inputs checked once, the plan, the steps, the Dask cluster, summaries."""
