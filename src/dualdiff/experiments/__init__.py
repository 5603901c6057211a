"""Applications of the library: the ring demo (``dualdiff demo``) and its report.

These modules exercise the public API; the library itself never imports them.
"""
