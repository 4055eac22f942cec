"""Raw stamps and alert inputs to Zarr nights: discovery, reading, staging, assembly, the driver."""
