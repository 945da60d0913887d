"""``import tensorrt`` for the contract test: the real bindings' API, checked, over a simulated GPU (trtsim)."""

import tensorrt_bindings as _real
import trtsim

trtsim.install(_real, globals())
