"""The scanning page: people judge candidates, their verdicts go to a database (``s2v scan``).

- :mod:`.queue`: the candidates of the scores, the queue orders, who has seen what;
- :mod:`.images`: stamp PNGs from the Zarr store, stretched as the reports stretch them;
- :mod:`.app`: the ASGI app (page, JSON API, images), its body limit and token check;
- :mod:`.server`: ``s2v scan``: inputs checked, the socket bound, uvicorn run;
- :mod:`.labels`: ``s2v labels export``: the consensus as an autoscan labels CSV.
"""
