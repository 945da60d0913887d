"""TensorRT engines for an exported artifact: profiles, binding plans and the engine manifest (pure Python),
plus one thin class over the TensorRT API (engine.py) that is the only code importing tensorrt or pycuda.
"""
