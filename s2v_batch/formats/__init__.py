"""Bytes to pixels and records: GIF/FITS decoding, Avro containers, alert schemas and packets."""
