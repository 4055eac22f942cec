"""Conventions, survey facts, configs, faults, file-system helpers: the layer every other one stands on."""
