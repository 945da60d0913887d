"""``pycuda.driver`` for the contract test: cudasim, with pycuda's one-thread context rule."""

from cudasim import *  # noqa: F403
from cudasim import Context, Device, DeviceAllocation, LogicError, Stream  # noqa: F401
