"""Cohort registration: many pairs as one resumable batch on Dask, and a QA report to review in a browser.

- :mod:`.pairs`: the pairs CSV and each pair's settings;
- :mod:`.store`: the output folder (one folder per pair, written whole or not at all; input hashes);
- :mod:`.job`: one pair on a worker (``registration.register`` + ``registration.write_outputs`` + thumbnails);
- :mod:`.thumbnails`: checkerboard, Jacobian overlay and deformation grid at the worst-Jacobian slice;
- :mod:`.runner`: the Dask run (``run_batch``), resuming and stopping;
- :mod:`.report`: ``report.html``/``.csv``/``.json`` and the cohort plot;
- :mod:`.scene`: the same for volume nodes of a Slicer scene, through the module logic.
"""
