"""Data-loss prevention: filters find sensitive values, policies say what happens to them.

:mod:`gateway_core.dlp.filter` is what a filter plugin implements; :mod:`gateway_core.dlp.policy` the
``dlp:`` configuration.
"""
