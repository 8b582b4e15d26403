"""Hostile input meets a clear 4xx, never a 500: JSON nested too deep.

Everything goes through hypercorn on a real socket.
"""
