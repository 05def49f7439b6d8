"""The drawing code of the built-in renderers, one module per figure.

Each module's ``draw(runs, fig, **options)`` fills a Figure; the plugin modules in
:mod:`normviz.default_plugins` register them and import a module here only when its
figure is first drawn. These modules import matplotlib but not torch, nor h5py (runs
arrive opened).
"""
