"""Wan's denoising schedulers in numpy, reproducing diffusers for the flow-matching configurations Wan uses.

The serving path must not import torch, so ``UniPCMultistepScheduler`` (flow sigmas) and
``FlowMatchEulerDiscreteScheduler`` (static shift) are ported here operation by operation: the same float64
schedule construction, the same float32 scalar math in the steps, the same state machine (step index from
begin_index 0, model-output history, warm-up and final lower-order steps, corrector skipping). Anything in a
``scheduler_config.json`` that this port does not reproduce exactly is refused with ``ModelFormatError``.

Samples and model outputs are computed in float32 (inputs of another dtype are cast first); for float32 inputs
the results match diffusers to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any, Protocol

import numpy as np

from wanrt.errors import InvalidRequestError, ModelFormatError

_F32 = np.float32
_ONE = _F32(1.0)


class Scheduler(Protocol):
    """What the denoising loop needs from a scheduler."""

    timesteps: np.ndarray  # values the model is conditioned on, and compared to the expert boundary
    sigmas: np.ndarray  # float32, one more than timesteps (the terminal sigma)

    @property
    def num_train_timesteps(self) -> int: ...

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray) -> np.ndarray: ...


def _refuse(key: str, value: Any, why: str) -> ModelFormatError:
    return ModelFormatError(f"scheduler config {key}={value!r} is not supported: {why}")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _refuse(key, value, "expected a positive integer")
    return value


def _positive_real(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < float("inf"):
        raise _refuse(key, value, "expected a positive finite number")
    return value


def _shift_terminal(value: Any) -> float | None:
    # diffusers stretches only when the value is truthy; 1.0 would divide by zero.
    if value is None or (isinstance(value, Real) and not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise _refuse("shift_terminal", value, "expected null or a number in (0, 1)")
    return value


def _stretch_to_terminal(sigmas: np.ndarray, shift_terminal: float) -> np.ndarray:
    # diffusers' stretch_shift_to_terminal: rescale 1 - sigma so the last sigma lands on shift_terminal.
    one_minus_z = 1 - sigmas
    scale_factor = one_minus_z[-1] / (1 - shift_terminal)
    return 1 - (one_minus_z / scale_factor)


def _check_steps(num_inference_steps: int, shift_terminal: float | None) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int | np.integer):
        raise InvalidRequestError("num_inference_steps", f"expected an integer, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise InvalidRequestError("num_inference_steps", f"must be at least 1, got {num_inference_steps}")
    if shift_terminal and num_inference_steps < 2:
        # A one-sigma schedule is [1.0]; stretching it divides 0 by 0 (diffusers yields NaN timesteps).
        raise InvalidRequestError("num_inference_steps", "must be at least 2 with shift_terminal")
    return int(num_inference_steps)


class _FlowScheduler:
    """Step bookkeeping shared by both schedulers (diffusers with ``set_begin_index(0)``)."""

    def __init__(self, num_train_timesteps: int) -> None:
        self._num_train_timesteps = _positive_int("num_train_timesteps", num_train_timesteps)
        self.timesteps = np.zeros(0, dtype=np.float32)
        self.sigmas = np.zeros(0, dtype=np.float32)
        self.num_inference_steps: int | None = None
        self._step_index = 0

    @property
    def num_train_timesteps(self) -> int:
        """Length of the training schedule; timesteps live in [0, num_train_timesteps)."""
        return self._num_train_timesteps

    @property
    def step_index(self) -> int:
        """Index of the timestep the next ``step`` call denoises."""
        return self._step_index

    def _begin_step(self, timestep: float) -> int:
        # diffusers ignores the timestep once begin_index is set; checking it catches a loop out of sync
        # with the scheduler (a missed set_timesteps, a skipped or repeated step) instead of going on silently.
        if self.num_inference_steps is None:
            raise RuntimeError("set_timesteps must be called before step")
        i = self._step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"all {self.num_inference_steps} steps are done; call set_timesteps again")
        if timestep != self.timesteps[i]:
            raise ValueError(f"step {i} expects timestep {self.timesteps[i]}, got {timestep}")
        return i


class FlowMatchEulerScheduler(_FlowScheduler):
    """``FlowMatchEulerDiscreteScheduler`` with a static shift: first-order Euler steps along the flow."""

    def __init__(self, *, num_train_timesteps: int = 1000, shift: float = 1.0,
                 shift_terminal: float | None = None) -> None:
        super().__init__(num_train_timesteps)
        self.shift = _positive_real("shift", shift)
        self.shift_terminal = _shift_terminal(shift_terminal)
        # diffusers' __init__ builds a shifted float32 training schedule and keeps only its ends; set_timesteps
        # then interpolates between them and shifts AGAIN (so shift is applied twice; reproduced on purpose).
        n = _F32(self._num_train_timesteps)
        ends = np.array([n, 1], dtype=np.float32) / n
        ends = _F32(shift) * ends / (_ONE + _F32(shift - 1) * ends)
        self._sigma_max, self._sigma_min = float(ends[0]), float(ends[1])

    def set_timesteps(self, num_inference_steps: int, sigmas: Sequence[float] | None = None) -> None:
        """Builds the schedule for ``num_inference_steps`` steps and resets the step state. ``sigmas``: the
        unshifted sigmas to use instead (diffusers' ``set_timesteps(sigmas=...)``, float32 math as there)."""
        steps = _check_steps(num_inference_steps, self.shift_terminal)
        n = self._num_train_timesteps
        if sigmas is None:
            sigmas = np.linspace(self._sigma_max * n, self._sigma_min * n, steps) / n  # float64, as diffusers
        else:
            sigmas = np.asarray(sigmas, dtype=np.float64).astype(np.float32)
            if sigmas.shape != (steps,) or not np.all((sigmas > 0) & (sigmas <= 1)):
                raise InvalidRequestError("sigmas", f"need {steps} values in (0, 1], got {sigmas.tolist()}")
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if self.shift_terminal:
            sigmas = _stretch_to_terminal(sigmas, self.shift_terminal)
        sigmas = sigmas.astype(np.float32)
        self.timesteps = sigmas * _F32(n)  # float32, as diffusers
        self.sigmas = np.append(sigmas, _F32(0.0)).astype(np.float32)
        self.num_inference_steps = steps
        self._step_index = 0

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray) -> np.ndarray:
        """One Euler step from ``timestep`` to the next one; returns the new sample (float32)."""
        i = self._begin_step(timestep)
        dt = self.sigmas[i + 1] - self.sigmas[i]
        prev = np.asarray(sample, dtype=np.float32) + dt * np.asarray(model_output, dtype=np.float32)
        self._step_index += 1
        return prev


class UniPCFlowScheduler(_FlowScheduler):
    """``UniPCMultistepScheduler`` with ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``,
    ``predict_x0=True``: the multistep UniP predictor plus UniC corrector in data (x0) prediction."""

    def __init__(self, *, num_train_timesteps: int = 1000, flow_shift: float = 1.0, solver_order: int = 2,
                 solver_type: str = "bh2", lower_order_final: bool = True,
                 disable_corrector: Sequence[int] = (), final_sigmas_type: str = "zero",
                 shift_terminal: float | None = None) -> None:
        super().__init__(num_train_timesteps)
        self.flow_shift = _positive_real("flow_shift", flow_shift)
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise _refuse("solver_order", solver_order, "wanrt reproduces orders 1, 2 and 3")
        self.solver_order = int(solver_order)
        if solver_type in ("midpoint", "heun", "logrho"):
            solver_type = "bh2"  # diffusers silently registers these as bh2
        if solver_type not in ("bh1", "bh2"):
            raise _refuse("solver_type", solver_type, "expected 'bh1' or 'bh2'")
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)
        if isinstance(disable_corrector, str | bytes) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in disable_corrector
        ):
            raise _refuse("disable_corrector", disable_corrector, "expected a list of step indices")
        self.disable_corrector = frozenset(disable_corrector)
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise _refuse("final_sigmas_type", final_sigmas_type, "expected 'zero' or 'sigma_min'")
        self.final_sigmas_type = final_sigmas_type
        self.shift_terminal = _shift_terminal(shift_terminal)
        # Configurations where diffusers' own last step is not finite (a 0 * inf or a singular solve against
        # a zero or repeated final sigma); reproducing them would mean reproducing NaN latents.
        if final_sigmas_type == "zero" and solver_type == "bh1":
            raise _refuse("solver_type", solver_type, "with final_sigmas_type='zero' diffusers' last UniPC step "
                          "computes 0 * inf and returns NaN; use 'bh2' or final_sigmas_type='sigma_min'")
        if not self.lower_order_final and (
            (final_sigmas_type == "zero" and self.solver_order >= 2)
            or (final_sigmas_type == "sigma_min" and self.solver_order >= 3)
        ):
            raise _refuse("lower_order_final", lower_order_final,
                          f"with solver_order={self.solver_order} and final_sigmas_type={final_sigmas_type!r} "
                          "diffusers' last multistep update is not finite (inf/NaN latents)")
        self._reset_state()

    def _reset_state(self) -> None:
        self._model_outputs: list[np.ndarray | None] = [None] * self.solver_order  # x0 predictions, newest last
        self._lower_order_nums = 0
        self._this_order = 0
        self._last_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Builds the schedule for ``num_inference_steps`` steps and resets the multistep state."""
        steps = _check_steps(num_inference_steps, self.shift_terminal)
        n = self._num_train_timesteps
        sigmas = np.linspace(1, 1 / n, steps + 1)[:-1]  # float64, as diffusers
        sigmas = self.flow_shift * sigmas / (1 + (self.flow_shift - 1) * sigmas)
        if self.shift_terminal:
            sigmas = _stretch_to_terminal(sigmas, self.shift_terminal)
        if np.fabs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # diffusers: keeps log(alpha = 1 - sigma) finite at the first step
        # diffusers casts to int64 (truncation), whatever timestep_spacing says: flow sigmas overwrite it.
        self.timesteps = (sigmas * n).astype(np.int64)
        last = sigmas[-1] if self.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.append(sigmas, last).astype(np.float32)
        self.num_inference_steps = steps
        self._step_index = 0
        self._reset_state()

    def _lambda(self, index: int) -> np.float32:
        # log-SNR for flow sigmas: alpha = 1 - sigma, in float32 like diffusers' 0-dim tensors.
        sigma = self.sigmas[index]
        with np.errstate(divide="ignore"):  # sigma = 0 at the final step gives +inf, as in torch
            return np.log(_ONE - sigma) - np.log(sigma)

    def _bh_update(self, x: np.ndarray, s0: int, order: int, model_t: np.ndarray | None = None) -> np.ndarray:
        """UniP (``model_t`` None) or UniC (``model_t`` = x0 prediction at sigma[s0 + 1]) from sigma[s0] to
        sigma[s0 + 1]; diffusers' multistep_uni_p_bh_update / multistep_uni_c_bh_update with predict_x0."""
        sigma_t, sigma_s0 = self.sigmas[s0 + 1], self.sigmas[s0]
        alpha_t = _ONE - sigma_t
        lambda_s0 = self._lambda(s0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            h = self._lambda(s0 + 1) - lambda_s0
            m0 = self._model_outputs[-1]
            rks: list[np.float32] = []
            d1s: list[np.ndarray] = []
            for i in range(1, order):
                rk = (self._lambda(s0 - i) - lambda_s0) / h
                rks.append(rk)
                d1s.append((self._model_outputs[-(i + 1)] - m0) / rk)
            rks.append(_ONE)
            rk_vec = np.array(rks, dtype=np.float32)

            hh = -h  # predict_x0
            h_phi_1 = np.expm1(hh)  # h * phi_1(h) = e^h - 1
            h_phi_k = h_phi_1 / hh - _ONE
            factorial_i = 1
            b_h = hh if self.solver_type == "bh1" else np.expm1(hh)
            rows, b = [], []
            for i in range(1, order + 1):
                rows.append(rk_vec ** (i - 1))
                b.append(h_phi_k * _F32(factorial_i) / b_h)
                factorial_i *= i + 1
                h_phi_k = h_phi_k / hh - _F32(1 / factorial_i)
            r_mat = np.stack(rows).astype(np.float32)
            b_vec = np.array(b, dtype=np.float32)

            x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
            if model_t is None:
                # Predictor: order 2 uses the fixed rho = 0.5 (diffusers' simplification), higher orders solve.
                if order == 1:
                    rhos = np.zeros(0, dtype=np.float32)
                elif order == 2:
                    rhos = np.array([0.5], dtype=np.float32)
                else:
                    rhos = np.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]).astype(np.float32)
                return (x_t_ - alpha_t * b_h * _weighted(rhos, d1s)).astype(np.float32)
            # Corrector: order 1 uses the fixed rho = 0.5, higher orders solve the full system.
            if order == 1:
                rhos_c = np.array([0.5], dtype=np.float32)
            else:
                rhos_c = np.linalg.solve(r_mat, b_vec).astype(np.float32)
            corr = _weighted(rhos_c[:-1], d1s) + rhos_c[-1] * (model_t - m0)
            return (x_t_ - alpha_t * b_h * corr).astype(np.float32)

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray) -> np.ndarray:
        """One UniPC step: correct ``sample`` with the new model output (UniC), then predict the sample at the
        next timestep (UniP). Returns the new sample (float32)."""
        i = self._begin_step(timestep)
        model_output = np.asarray(model_output, dtype=np.float32)
        sample = np.asarray(sample, dtype=np.float32)
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self._last_sample is not None

        x0_pred = sample - self.sigmas[i] * model_output  # flow prediction: v = noise - x0, x_t = x0 + sigma v
        if use_corrector:
            sample = self._bh_update(self._last_sample, i - 1, self._this_order, model_t=x0_pred)

        self._model_outputs = [*self._model_outputs[1:], x0_pred]
        order = self.solver_order
        if self.lower_order_final:
            order = min(order, self.num_inference_steps - i)
        self._this_order = min(order, self._lower_order_nums + 1)  # warm-up: no history yet

        self._last_sample = sample
        prev = self._bh_update(sample, i, self._this_order)
        self._lower_order_nums = min(self._lower_order_nums + 1, self.solver_order)
        self._step_index += 1
        return prev


def _weighted(weights: np.ndarray, terms: list[np.ndarray]) -> np.ndarray | np.float32:
    """sum_k weights[k] * terms[k] (diffusers' einsum over the history axis); 0 for an empty history."""
    total: np.ndarray | np.float32 = _F32(0.0)
    for k, term in enumerate(terms):
        total = weights[k] * term if k == 0 else total + weights[k] * term
    return total


# Keys whose value changes the math and that this port only reproduces at one value (diffusers' default
# shown second): anything else is refused.
_UNIPC_FIXED: dict[str, tuple[Any, Any]] = {
    "use_flow_sigmas": (True, False),
    "prediction_type": ("flow_prediction", "epsilon"),
    "predict_x0": (True, True),
    "thresholding": (False, False),
    "solver_p": (None, None),
    "use_karras_sigmas": (False, False),
    "use_exponential_sigmas": (False, False),
    "use_beta_sigmas": (False, False),
    "use_dynamic_shifting": (False, False),
}
_EULER_FIXED: dict[str, tuple[Any, Any]] = {
    "use_dynamic_shifting": (False, False),
    "invert_sigmas": (False, False),
    "use_karras_sigmas": (False, False),
    "use_exponential_sigmas": (False, False),
    "use_beta_sigmas": (False, False),
    "stochastic_sampling": (False, False),
}
# Arguments taken as they are (validated by the constructors), with diffusers' defaults.
_UNIPC_ARGS = {"num_train_timesteps": 1000, "flow_shift": 1.0, "solver_order": 2, "solver_type": "bh2",
               "lower_order_final": True, "disable_corrector": [], "final_sigmas_type": "zero",
               "shift_terminal": None}
_EULER_ARGS = {"num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": None}


def _check_fixed(config: Mapping[str, Any], fixed: dict[str, tuple[Any, Any]]) -> None:
    for key, (supported, default) in fixed.items():
        value = config.get(key, default)
        # Flags act by truthiness in diffusers (`if self.config.thresholding:`), strings and None by value.
        same = bool(value) == supported if isinstance(supported, bool) else value == supported
        if not same:
            raise _refuse(key, value, f"wanrt's numpy scheduler reproduces only {key}={supported!r}")


def scheduler_from_config(config: Mapping[str, Any]) -> Scheduler:
    """Builds the scheduler a diffusers ``scheduler_config.json`` describes (its parsed content, with
    ``_class_name``), or raises ``ModelFormatError`` naming the key it cannot reproduce exactly.

    Keys that do not change the math for the supported configurations (beta schedule, thresholding
    parameters, dynamic-shift parameters, ``_diffusers_version`` ...) are ignored, as diffusers ignores them.
    """
    name = config.get("_class_name")
    if name == "UniPCMultistepScheduler":
        _check_fixed(config, _UNIPC_FIXED)
        spacing = config.get("timestep_spacing", "linspace")
        if spacing not in ("linspace", "leading", "trailing"):  # no effect with flow sigmas, but diffusers raises
            raise _refuse("timestep_spacing", spacing, "expected 'linspace', 'leading' or 'trailing'")
        return UniPCFlowScheduler(**{k: config.get(k, d) for k, d in _UNIPC_ARGS.items()})
    if name == "FlowMatchEulerDiscreteScheduler":
        _check_fixed(config, _EULER_FIXED)
        return FlowMatchEulerScheduler(**{k: config.get(k, d) for k, d in _EULER_ARGS.items()})
    raise _refuse("_class_name", name,
                  "wanrt reproduces UniPCMultistepScheduler and FlowMatchEulerDiscreteScheduler only")
