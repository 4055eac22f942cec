"""The stamp and alert simulator, its file layouts and the demo data."""
