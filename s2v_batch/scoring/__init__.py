"""Zarr nights to published Parquet scores: the driver, its worker side, the checks before."""
