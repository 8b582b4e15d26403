"""Hostile input meets a clear 4xx, never a 500 or a connection held open: JSON nested too deep,
clients sending their request byte by byte, requests whose body framing is ambiguous.

Everything goes through hypercorn on a real socket; slow clients and bad framing on raw sockets.
"""
