"""Figures: styles, colours and saving shared by all renderers.

Submodules are imported on demand so that ``import normviz.plot`` stays
cheap: :mod:`normviz.plot.palette` (no matplotlib), :mod:`normviz.plot.style`
and :mod:`normviz.plot.save`.
"""
