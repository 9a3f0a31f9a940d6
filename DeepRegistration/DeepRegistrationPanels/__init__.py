"""What the two panels (Deep Registration, Deep Metric Training) share, beside the module files.

A package, not a top-level file: Slicer takes every ``.py`` file of the scripted-modules folder for a
module. It runs only inside Slicer (it imports ``qt``, ``vtk`` and ``slicer``); the library
(``DeepRegistrationLib``) stays free of Qt.
"""
