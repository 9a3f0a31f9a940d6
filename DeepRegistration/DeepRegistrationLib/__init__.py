"""DeepRegistration: learned image registration for 3D Slicer and the command line.

The library works in physical millimetres with ITK/LPS geometry; transforms map fixed-space
points to moving-space points. Only :mod:`DeepRegistrationLib.mrml` imports Slicer.
"""
__version__ = "0.1.0"
