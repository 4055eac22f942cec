"""Training a model on labelled Zarr nights: the data, the loop, its config."""
