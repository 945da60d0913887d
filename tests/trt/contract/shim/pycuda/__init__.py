"""``import pycuda`` for the contract test (pycuda.driver is simulated: cudasim)."""
