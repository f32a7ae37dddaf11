"""The [tune] schema and the objectives shared by the tuners (NumPy and JAX)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.errors import JaxschedError
from tuning.objectives import (
    ALL_METRICS,
    Objective,
    add_derived,
    aggregate,
    measured_time,
    objective_from_settings,
)
from tuning.settings import tune_settings


def test_defaults():
    s = tune_settings({}, "c.toml")
    assert (s.method, s.resolved_sampler, s.objective, s.batch) == ("optuna", "tpe", "weighted", 16)
    assert tune_settings({"objective": "pareto"}).resolved_sampler == "nsga2"
    obj = objective_from_settings(s, "c.toml")
    assert obj.directions == ("maximize",) and obj.names == ("score",)
    assert [t.metric for t in obj.terms] == ["completed_per_time", "latency_p95"]
    assert obj.needs_baseline


@pytest.mark.parametrize("table,message", [
    ({"bogus": 1}, "c.toml: tune.bogus: unknown key"),
    ({"sampler": "grid"}, "c.toml: tune.sampler:"),
    ({"batch": 0}, "c.toml: tune.batch:"),
    ({"weights": {"latency_p95": -1.0}}, "weights.latency_p95: must be a finite number >= 0"),
    ({"constraints": [{"metric": "evictions"}]}, "a constraint needs max or min"),
    ({"pareto": {"maximize": ["x"], "minimize": ["x"]}}, "'x' is both maximized and minimized"),
    ({"space": {"budget": {"lo": 1}}}, "c.toml: tune.space.budget.lo: unknown key"),
    ({"scales": {"latency_p95": 0}}, "scales.latency_p95: must be a positive number"),
])
def test_bad_tune_tables_are_refused_naming_file_and_key(table, message):
    with pytest.raises(JaxschedError) as err:
        tune_settings(table, "c.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_metric_names_the_key():
    with pytest.raises(JaxschedError, match=r"c.toml: tune.weights.throughput: unknown metric"):
        objective_from_settings(tune_settings({"weights": {"throughput": 1.0}}), "c.toml")
    with pytest.raises(JaxschedError, match=r"tune.constraints.0.metric: unknown metric"):
        objective_from_settings(tune_settings({"constraints": [{"metric": "nope", "max": 1}]}), "c.toml")


def metrics(**kw):
    base = {k: 1.0 for k in ALL_METRICS}
    base.update(kw)
    return base


def test_weighted_score_is_normalized_by_the_baseline():
    s = tune_settings({"weights": {"completed_per_time": 2.0, "latency_p95": 1.0,
                                   "evictions": 1.0},
                       "scales": {"evictions": 10.0}})
    obj = objective_from_settings(s).with_baseline(metrics(completed_per_time=4.0, latency_p95=100.0))
    assert [t.scale for t in obj.terms] == [4.0, 100.0, 10.0]
    base = metrics(completed_per_time=4.0, latency_p95=100.0, evictions=10.0)
    assert obj.values(base) == pytest.approx((2.0 - 1.0 - 1.0,))
    better = metrics(completed_per_time=6.0, latency_p95=50.0, evictions=0.0)
    assert obj.score(better) == pytest.approx(3.0 - 0.5)
    # a batch of trials at once (NumPy arrays)
    batch = {k: np.array([base[k], better[k]]) for k in base}
    np.testing.assert_allclose(obj.score(batch), [0.0, 2.5])
    # a zero or undefined baseline falls back to scale 1
    z = objective_from_settings(tune_settings({})).with_baseline(
        metrics(completed_per_time=0.0, latency_p95=float("nan")))
    assert [t.scale for t in z.terms] == [1.0, 1.0]


def test_pareto_values_constraints_and_nonfinite_reasons():
    s = tune_settings({"objective": "pareto",
                       "pareto": {"maximize": ["tokens_per_time"], "minimize": ["latency_p95"]},
                       "constraints": [{"metric": "evictions_per_request", "max": 0.1},
                                       {"metric": "utilization", "min": 0.5, "max": 0.9}]})
    obj = objective_from_settings(s)
    assert obj.directions == ("maximize", "minimize")
    assert obj.values(metrics(tokens_per_time=7.0, latency_p95=3.0)) == (7.0, 3.0)
    assert [c.name for c in obj.constraints] == [
        "evictions_per_request<=0.1", "utilization<=0.9", "utilization>=0.5"]
    g = obj.constraint_values(metrics(evictions_per_request=0.3, utilization=0.6))
    assert g == pytest.approx((0.2, -0.3, -0.1))
    assert not obj.feasible(metrics(evictions_per_request=0.3, utilization=0.6))
    assert obj.feasible(metrics(evictions_per_request=0.0, utilization=0.6))
    assert obj.nonfinite_reason(metrics()) is None
    why = obj.nonfinite_reason(metrics(latency_p95=float("nan"), utilization=float("inf")))
    assert why == "non-finite metrics: latency_p95=nan, utilization=inf"
    # metrics the objective does not read may be NaN
    assert obj.nonfinite_reason(metrics(ttft_p95=float("nan"))) is None
    assert Objective.from_dict(obj.to_dict()) == obj


def test_loss_is_differentiable_for_the_gradient_tuner():
    s = tune_settings({"constraints": [{"metric": "evictions", "max": 2.0}]})
    obj = objective_from_settings(s).with_baseline(metrics(completed_per_time=2.0, latency_p95=10.0))

    def loss(x):
        m = metrics(completed_per_time=x[0], latency_p95=x[1], evictions=x[2])
        return obj.loss(m, penalty=10.0)

    g = jax.grad(loss)(jnp.array([2.0, 10.0, 4.0]))
    # d/d throughput = -1/2, d/d p95 = +0.5/10, d/d evictions = 2 * 10 * (4 - 2) / 2 / 2
    np.testing.assert_allclose(np.asarray(g), [-0.5, 0.05, 10.0], rtol=1e-6)
    assert float(jax.grad(loss)(jnp.array([2.0, 10.0, 1.0]))[2]) == 0.0  # feasible: no penalty


def test_derived_metrics_and_workload_average():
    per = {"completed_per_time": np.array([[2.0, 1.0]]), "evictions": np.array([[10.0, 0.0]])}
    elapsed = measured_time(horizon=100, warmup=20, d0=1.0, d1=0.0, final_time=np.array([[0.0, 0.0]]))
    assert np.all(elapsed == 80.0)
    out = add_derived(per, elapsed)
    np.testing.assert_allclose(out["completed"], [[160.0, 80.0]])
    np.testing.assert_allclose(out["evictions_per_request"], [[10.0 / 160.0, 0.0]])
    # with d1 > 0 the measured span is the final time's share of the iterations
    assert measured_time(100, 20, 1.0, 0.5, np.array(50.0)) == pytest.approx(40.0)
    agg = aggregate({"x": np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])})
    assert agg["x"][0] == 2.0 and math.isnan(agg["x"][1])
    jagg = aggregate({"x": jnp.array([1.0, jnp.nan, 3.0])}, xp=jnp)
    assert float(jagg["x"]) == 2.0
