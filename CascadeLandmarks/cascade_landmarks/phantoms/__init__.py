"""Synthetic volumes with exactly known landmarks, for tests, smoke runs and benchmarks.

- ``spheres``: three bright spheres in noise, a jittered layout; small and fast, for tests of the machinery.

Every figure measured on these volumes is a figure on synthetic data, and says so.
"""
