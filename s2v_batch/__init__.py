"""s2v-batch: score every transient detection of a survey with a CNN.

The library holds no Prefect import; ``flows/`` wraps it in Prefect flows.
"""

__version__ = "0.1.0"
