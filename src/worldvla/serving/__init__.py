"""Serve a policy over websockets (msgpack with numpy arrays), in the style of openpi.

The wire format (:mod:`~worldvla.serving.protocol`) and the client
(:mod:`~worldvla.serving.client`) import only numpy, msgpack and websockets, so a simulator
that lives in its own Python environment (LIBERO) can talk to a server running the model.
"""
