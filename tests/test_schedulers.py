"""The numpy schedulers against diffusers' own classes: same schedule, same denoising trajectory."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from wanrt.engine.schedulers import FlowMatchEulerScheduler, UniPCFlowScheduler, scheduler_from_config
from wanrt.errors import InvalidRequestError, ModelFormatError

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

STEPS = [1, 2, 3, 4, 7, 20, 50]
SHIFTS = [1.0, 3.0, 5.0, 12.0]
# bh1 with a zero final sigma is refused (diffusers returns NaN there), so bh1 runs with sigma_min.
SOLVERS = [("bh2", "zero"), ("bh2", "sigma_min"), ("bh1", "sigma_min")]
RTOL = 1e-5
SHAPE = (1, 4, 3, 5, 6)  # (batch, channels, frames, height, width) like Wan latents


def fake_model(x: np.ndarray, i: int) -> np.ndarray:
    """Deterministic 'velocity' that depends nonlinearly on the sample and the step, so a scheduler that
    feeds back a different sample, or uses the wrong step's sigma, drifts away from the reference."""
    return (np.sin(3.0 * x + 0.7 * i) * 0.8 - 0.5 * x).astype(np.float32)


def initial_noise() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def run_ours(scheduler, steps: int) -> np.ndarray:
    scheduler.set_timesteps(steps)
    x = initial_noise()
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(fake_model(x, i), t, x)
        assert x.dtype == np.float32
    return x


def run_diffusers(scheduler, steps: int) -> np.ndarray:
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)  # as WanPipeline does
    x = torch.from_numpy(initial_noise())
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(torch.from_numpy(fake_model(x.numpy(), i)), t, x, return_dict=False)[0]
    return x.numpy()


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert np.isfinite(ref).all() and np.isfinite(ours).all()
    assert rel_diff(ours, ref) <= RTOL


def diffusers_unipc(**kw):
    return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, **kw)


def assert_same_schedule(ours, ref) -> None:
    ref_t = ref.timesteps.numpy()
    assert ours.timesteps.dtype == ref_t.dtype
    np.testing.assert_array_equal(ours.timesteps, ref_t)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())


# --- UniPC -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("shift", [*SHIFTS, 3.7])
@pytest.mark.parametrize("steps", [*STEPS, 1000])
def test_unipc_schedule_matches(steps, shift, final):
    ours = UniPCFlowScheduler(flow_shift=shift, final_sigmas_type=final)
    ref = diffusers_unipc(flow_shift=shift, final_sigmas_type=final)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_same_schedule(ours, ref)
    assert ours.timesteps[0] == 999  # the first sigma is nudged below 1 before the int64 truncation


@pytest.mark.parametrize("solver_type,final", SOLVERS)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_unipc_loop_matches(steps, shift, order, solver_type, final):
    kw = dict(flow_shift=shift, solver_order=order, solver_type=solver_type, final_sigmas_type=final)
    assert_close(run_ours(UniPCFlowScheduler(**kw), steps), run_diffusers(diffusers_unipc(**kw), steps))


@pytest.mark.parametrize(
    "kw",
    [
        dict(solver_order=1, lower_order_final=False),
        dict(solver_order=2, lower_order_final=False, final_sigmas_type="sigma_min"),
        dict(solver_order=2, lower_order_final=False, final_sigmas_type="sigma_min", solver_type="bh1"),
        dict(solver_order=2, disable_corrector=[0, 1, 2]),
        dict(solver_order=3, disable_corrector=[4]),
        dict(solver_order=2, shift_terminal=0.1),
        dict(solver_order=3, shift_terminal=0.05, final_sigmas_type="sigma_min"),
        dict(solver_order=2, num_train_timesteps=500),
        dict(solver_order=2, solver_type="midpoint"),  # diffusers maps it to bh2
        dict(solver_order=2, flow_shift=3),  # an int shift, as a hand-written JSON may have
    ],
)
@pytest.mark.parametrize("steps", [3, 10])
def test_unipc_variants_match(kw, steps):
    kw = {"flow_shift": 5.0, **kw}
    ref = diffusers_unipc(**kw)
    ours = UniPCFlowScheduler(**kw)
    assert_close(run_ours(ours, steps), run_diffusers(ref, steps))
    assert_same_schedule(ours, ref)


def test_unipc_options_change_the_result():
    """Guards the comparisons above against a port that ignores order, solver type or corrector."""
    base = run_ours(UniPCFlowScheduler(flow_shift=5.0, solver_order=1), 10)
    variants = {
        "order 2": run_ours(UniPCFlowScheduler(flow_shift=5.0, solver_order=2), 10),
        "order 3": run_ours(UniPCFlowScheduler(flow_shift=5.0, solver_order=3), 10),
    }
    ref2 = variants["order 2"]
    variants["bh1"] = run_ours(UniPCFlowScheduler(flow_shift=5.0, solver_type="bh1", final_sigmas_type="sigma_min"),
                               10)
    variants["bh2 sigma_min"] = run_ours(UniPCFlowScheduler(flow_shift=5.0, final_sigmas_type="sigma_min"), 10)
    variants["no corrector"] = run_ours(UniPCFlowScheduler(flow_shift=5.0, disable_corrector=range(10)), 10)
    assert rel_diff(variants["order 2"], base) > 1e-2
    assert rel_diff(variants["order 3"], ref2) > 1e-3
    for name in ("bh1", "bh2 sigma_min", "no corrector"):
        assert rel_diff(variants[name], ref2) > 1e-3, name


def test_unipc_reset_and_reuse():
    """set_timesteps clears the multistep history: a second loop reproduces the first bit for bit."""
    sched = UniPCFlowScheduler(flow_shift=3.0, solver_order=3)
    first = run_ours(sched, 7)
    run_ours(sched, 4)
    np.testing.assert_array_equal(run_ours(sched, 7), first)


# --- flow-match Euler --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift_terminal", [None, 0.1])
@pytest.mark.parametrize("shift", [*SHIFTS, 3.7])
@pytest.mark.parametrize("steps", STEPS)
def test_euler_matches(steps, shift, shift_terminal):
    ours = FlowMatchEulerScheduler(shift=shift, shift_terminal=shift_terminal)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=shift_terminal)
    if shift_terminal and steps == 1:  # stretching the one-sigma schedule [1.0] is 0 / 0 in diffusers
        with pytest.raises(InvalidRequestError, match="shift_terminal"):
            ours.set_timesteps(steps)
        return
    out, ref_out = run_ours(ours, steps), run_diffusers(ref, steps)
    assert_same_schedule(ours, ref)
    assert_close(out, ref_out)


def test_euler_shift_matters():
    assert rel_diff(run_ours(FlowMatchEulerScheduler(shift=5.0), 10),
                    run_ours(FlowMatchEulerScheduler(shift=1.0), 10)) > 1e-2


# --- scheduler_from_config ---------------------------------------------------------------------------------


def test_from_config_on_what_diffusers_writes(tmp_path):
    ref = diffusers_unipc(flow_shift=3.0)
    as_dict = {"_class_name": type(ref).__name__, **dict(ref.config)}
    ref.save_config(tmp_path)
    as_json = json.loads((tmp_path / "scheduler_config.json").read_text())
    expected = run_diffusers(diffusers.UniPCMultistepScheduler.from_config(as_json), 20)
    for config in (as_dict, as_json):
        sched = scheduler_from_config(config)
        assert isinstance(sched, UniPCFlowScheduler)
        assert sched.flow_shift == 3.0 and sched.solver_order == 2 and sched.num_train_timesteps == 1000
        assert_close(run_ours(sched, 20), expected)


def test_from_config_euler(tmp_path):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
    ref.save_config(tmp_path)
    sched = scheduler_from_config(json.loads((tmp_path / "scheduler_config.json").read_text()))
    assert isinstance(sched, FlowMatchEulerScheduler)
    assert_close(run_ours(sched, 10), run_diffusers(ref, 10))


def test_from_config_ignores_keys_without_effect():
    config = {
        "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0", "prediction_type": "flow_prediction",
        "use_flow_sigmas": True, "flow_shift": 5.0, "beta_schedule": "scaled_linear", "trained_betas": None,
        "rescale_betas_zero_snr": True, "steps_offset": 1, "timestep_spacing": "trailing",
        "dynamic_thresholding_ratio": 0.9, "sigma_min": 0.01, "sigma_max": 10.0, "time_shift_type": "linear",
        "some_future_key": 1,
    }
    ref = diffusers.UniPCMultistepScheduler.from_config(config)
    assert_close(run_ours(scheduler_from_config(config), 12), run_diffusers(ref, 12))


UNIPC = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True}
EULER = {"_class_name": "FlowMatchEulerDiscreteScheduler"}


@pytest.mark.parametrize(
    "base,key,value",
    [
        (UNIPC, "_class_name", "DPMSolverMultistepScheduler"),
        ({}, "_class_name", None),
        (UNIPC, "use_flow_sigmas", False),
        (UNIPC, "prediction_type", "epsilon"),
        (UNIPC, "prediction_type", "v_prediction"),
        (UNIPC, "predict_x0", False),
        (UNIPC, "thresholding", True),
        (UNIPC, "use_karras_sigmas", True),
        (UNIPC, "use_exponential_sigmas", True),
        (UNIPC, "use_beta_sigmas", True),
        (UNIPC, "use_dynamic_shifting", True),
        (UNIPC, "solver_p", {"_class_name": "DDIMScheduler"}),
        (UNIPC, "solver_order", 4),
        (UNIPC, "solver_order", 0),
        (UNIPC, "solver_type", "bh3"),
        (UNIPC, "final_sigmas_type", "sigma_last"),
        (UNIPC, "timestep_spacing", "karras"),
        (UNIPC, "flow_shift", 0.0),
        (UNIPC, "flow_shift", "3"),
        (UNIPC, "num_train_timesteps", 0),
        (UNIPC, "shift_terminal", 1.0),
        (UNIPC, "disable_corrector", "0"),
        (EULER, "use_dynamic_shifting", True),
        (EULER, "invert_sigmas", True),
        (EULER, "stochastic_sampling", True),
        (EULER, "use_karras_sigmas", True),
        (EULER, "use_exponential_sigmas", True),
        (EULER, "use_beta_sigmas", True),
        (EULER, "shift", -1.0),
    ],
)
def test_from_config_refuses(base, key, value):
    config = {**base, key: value} if value is not None else dict(base)
    with pytest.raises(ModelFormatError, match=key) as info:
        scheduler_from_config(config)
    assert repr(value) in str(info.value)


def test_from_config_defaults_are_diffusers_defaults():
    # A UniPC config without the flow keys is diffusers' epsilon / VP-sigma scheduler: refused, not guessed.
    with pytest.raises(ModelFormatError, match="use_flow_sigmas"):
        scheduler_from_config({"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction"})
    with pytest.raises(ModelFormatError, match="prediction_type"):
        scheduler_from_config({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True})


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(solver_type="bh1"), "solver_type"),
        (dict(lower_order_final=False), "lower_order_final"),
        (dict(lower_order_final=False, solver_order=3, final_sigmas_type="sigma_min"), "lower_order_final"),
    ],
)
def test_refuses_what_diffusers_turns_into_nan(kw, key):
    with pytest.raises(ModelFormatError, match=key):
        scheduler_from_config({**UNIPC, "flow_shift": 3.0, **kw})
    # The reason: diffusers' own final step is not finite there (if this ever passes, lift the refusal).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = run_diffusers(diffusers_unipc(flow_shift=3.0, **kw), 6)
        except RuntimeError:  # singular solve
            return
    assert not np.isfinite(out).all()


# --- interface guards --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [UniPCFlowScheduler, FlowMatchEulerScheduler])
def test_step_guards(cls):
    sched = cls()
    x = initial_noise()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(InvalidRequestError, match="num_inference_steps"):
        sched.set_timesteps(0)
    sched.set_timesteps(2)
    assert sched.num_train_timesteps == 1000 and sched.sigmas.dtype == np.float32 and len(sched.sigmas) == 3
    with pytest.raises(ValueError, match="expects timestep"):
        sched.step(x, sched.timesteps[1], x)  # skipping a step
    for t in sched.timesteps:
        x = sched.step(fake_model(x, 0), t, x)
    with pytest.raises(RuntimeError, match="steps are done"):
        sched.step(x, sched.timesteps[-1], x)


def test_half_precision_inputs_give_float32():
    sched = UniPCFlowScheduler(flow_shift=3.0)
    sched.set_timesteps(3)
    x = initial_noise().astype(np.float16)
    assert sched.step(x, sched.timesteps[0], x).dtype == np.float32


def test_module_does_not_import_torch():
    code = "import sys, wanrt.engine.schedulers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
