"""`vaedeploy web`: a bundle's decoder in a browser page, on onnxruntime-web, served from this machine.

``write_site`` writes a directory holding the explorer page (built from ``web/`` by npm into ``page/`` beside this
file, shipped as package data so a pip user needs no npm), the bundle files the page decodes with, and
``explorer.json``: the pad's axes (principal directions of the encoded training set). ``serve`` serves such a
directory on 127.0.0.1 with the cross-origin-isolation headers that let onnxruntime-web use threads. docs/web.md
describes the page.
"""
from __future__ import annotations

from .server import make_server, serve
from .site import PageNotBuilt, WebError, explorer_spec, write_site

__all__ = ["PageNotBuilt", "WebError", "explorer_spec", "make_server", "serve", "write_site"]
