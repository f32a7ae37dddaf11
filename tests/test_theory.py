"""jaxsched.theory against numbers computed by hand (worked out in the comments)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsched import theory as th
from jaxsched.errors import JaxschedError


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------
# raw formulas
# ------------------------------------------------------------------------------------------


def test_memory_time_conventions():
    # w = l o + (o + o^2)/2: (10, 20) -> 200 + 210 = 410
    assert th.memory_time(10, 20) == 410
    # WAIT: (o + 1)(l + o/2) = 21 * 20 = 420 = w + l
    assert th.wait_memory_time(10, 20) == 420
    # sum_{j=1..o} (l + j) is w
    assert sum(10 + j for j in range(1, 21)) == 410
    np.testing.assert_allclose(th.memory_time([10, 10], [40, 60]), [1220, 2430])


def test_raw_formulas_trace_under_jax():
    import jax
    import jax.numpy as jnp

    # d x*/dM = 1 / w = 1/1220 at l0 = 10, l1 = 40
    grad = jax.grad(lambda m: th.greedy_fixed_point(m, 10.0, 40.0))(jnp.float32(2000.0))
    assert float(grad) == pytest.approx(1 / 1220, rel=1e-5)
    m = jax.jit(th.wait_fluid_memory)(jnp.array([1.0, 2.0]), jnp.array([2.0, 4.0]),
                                      jnp.array([2.0, 3.0]), 1.0, 0.01)
    assert float(m) == pytest.approx(53 / 0.47, rel=1e-5)  # see test_wait_fluid_two_types


# ------------------------------------------------------------------------------------------
# WAIT
# ------------------------------------------------------------------------------------------

# Two types: lambda = (1, 2), l = (2, 4), l' = (2, 3), d0 = 1, d1 = 0.01.
#   type 1: (l'+1)(l + l'/2) = 3 * (2 + 1)   = 9
#   type 2: (l'+1)(l + l'/2) = 4 * (4 + 1.5) = 22
#   S = 1*9 + 2*22 = 53;  d1 S = 0.53
#   dT* = 1 / 0.47 = 2.12765957...;  M* = 53 / 0.47 = 112.765957...
#   n* = (1, 2) * dT* = (2.12766, 4.25532)
#   throughput: 1*2 + 2*3 = 8 tokens per unit time, 3 requests per unit time
TWO = dict(prompt_len=[2, 4], output_len=[2, 3], rate=[1, 2])


def test_wait_fluid_two_types():
    f = th.wait_fluid(**TWO, capacity=150, d0=1.0, d1=0.01)
    assert f.stable and f.feasible
    assert f.stage_memory_time == (9.0, 22.0)
    assert f.load == 53.0
    assert f.type_load == pytest.approx((0.09, 0.44))  # lambda_j d1 (..): 1*0.01*9, 2*0.01*22
    assert f.iteration_time == pytest.approx(1 / 0.47)
    assert f.memory == pytest.approx(53 / 0.47)
    assert f.per_stage == pytest.approx((1 / 0.47, 2 / 0.47))
    # per class: n*_j (l'_j + 1) prompts; n*_j * 9 and n*_j * 22 tokens; they add to M*
    assert f.per_class_prompts == pytest.approx((3 / 0.47, 8 / 0.47))
    assert sum(f.per_class_memory) == pytest.approx(f.memory)
    assert f.token_throughput == 8.0 and f.request_throughput == 3.0
    # stage memory of type 2 at stages 0..3: n*_2 (4 + s)
    np.testing.assert_allclose(f.stage_memory(1), 2 / 0.47 * np.array([4, 5, 6, 7]))
    # M* = 112.77 > 112: infeasible is an answer
    g = th.wait_fluid(**TWO, capacity=112, d0=1.0, d1=0.01)
    assert g.stable and not g.feasible and "M*" in g.reason


def test_wait_fluid_unstable():
    # d1 = 0.02: d1 S = 1.06 >= 1 -> unstable, but no single type is (0.18, 0.88 < 1)
    f = th.wait_fluid(**TWO, capacity=1e9, d0=1.0, d1=0.02)
    assert not f.stable and not f.feasible and f.unstable_types == ()
    assert math.isinf(f.memory) and math.isinf(f.iteration_time)
    assert "unstable" in f.reason and "\n" not in f.reason
    # d1 = 0.05: type 2 alone has 2 * 0.05 * 22 = 2.2 >= 1; type 1 has 0.45
    assert th.wait_fluid(**TWO, capacity=1e9, d0=1.0, d1=0.05).unstable_types == (1,)


def test_wait_thresholds_hand():
    # t0 = dT* = 2.12766 -> n = ceil(2.12766, 4.25532) = (3, 5)
    # M^pi = 3*9 + 5*22 = 137; t1 = 1 + 0.01*137 = 2.37 -> n = ceil(2.37, 4.74) = (3, 5): settled.
    # check: 2.37 <= 3/1 and 2.37 <= 5/2 = 2.5
    w = th.wait_thresholds(**TWO, capacity=150, d0=1.0, d1=0.01)
    assert w.thresholds == (3, 5)
    assert w.memory == 137.0 and w.iteration_time == pytest.approx(2.37)
    assert w.time_per_threshold == (3.0, 2.5)
    assert w.feasible and all(w.rate_ok) and w.memory_ok
    # C = 130 < 137: same thresholds, flagged
    w2 = th.wait_thresholds(**TWO, capacity=130, d0=1.0, d1=0.01)
    assert w2.thresholds == (3, 5) and not w2.feasible and not w2.memory_ok
    assert "M^pi = 137 > C = 130" in w2.reason


def test_wait_thresholds_unstable_raises():
    with pytest.raises(JaxschedError) as e:
        th.wait_thresholds(**TWO, capacity=1e9, d0=1.0, d1=0.02)
    assert "unstable" in one_line_error(e)


def test_wait_check_flags_rate_violation():
    # (3, 4): M^pi = 27 + 88 = 115, 1 + 1.15 = 2.15 > 4/2 = 2 -> type 1 queue grows
    w = th.wait_check(**TWO, thresholds=[3, 4], capacity=1e9, d0=1.0, d1=0.01)
    assert w.rate_ok == (True, False) and not w.feasible and w.reason.startswith("type 1")


def _rate_feasible(l, o, lam, n, d0, d1):
    mem = sum(ni * (oi + 1) * (li + oi / 2) for li, oi, ni in zip(l, o, n))
    return all(d0 + d1 * mem <= ni / x * (1 + 1e-12) for ni, x in zip(n, lam))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20), st.floats(0.1, 3.0)),
                min_size=1, max_size=3),
       st.floats(0.0, 0.9))
def test_wait_thresholds_are_minimal(classes, load_frac):
    l, o, lam = (list(x) for x in zip(*classes))
    s = sum(x * (b + 1) * (a + b / 2) for a, b, x in zip(l, o, lam))
    d1 = load_frac / s  # d1 S = load_frac < 1
    w = th.wait_thresholds(l, o, lam, capacity=math.inf, d0=1.0, d1=d1)
    n = list(w.thresholds)
    assert _rate_feasible(l, o, lam, n, 1.0, d1)
    for j in range(len(n)):  # lowering any threshold breaks a rate condition
        if n[j] > 1:
            lower = n.copy()
            lower[j] -= 1
            assert not _rate_feasible(l, o, lam, lower, 1.0, d1)


def test_wait_practical_thresholds():
    # B = 100, lambda = (1, 3): rho = (0.25, 0.75); l' = (9, 19):
    # n = (100*0.25/10, 100*0.75/20) = (2.5, 3.75) -> integers (2, 3)
    p = th.wait_practical_thresholds([9, 19], [1, 3], 100)
    assert p.share == (0.25, 0.75) and p.real == pytest.approx((2.5, 3.75))
    assert p.integer == (2, 3)


def test_wait_input_errors_are_one_line():
    with pytest.raises(JaxschedError) as e:
        th.wait_fluid([1, 2], [3], [1, 1], capacity=10, d0=1, d1=0)
    assert "output_len has 1 entries" in one_line_error(e)
    with pytest.raises(JaxschedError) as e:
        th.wait_fluid([1], [3], [-1], capacity=10, d0=1, d1=0)
    assert "rate" in one_line_error(e)
    with pytest.raises(JaxschedError) as e:
        th.wait_fluid([1], [3], [1], capacity=10, d0=0, d1=0)
    assert "d0" in one_line_error(e)


# ------------------------------------------------------------------------------------------
# Nested WAIT
# ------------------------------------------------------------------------------------------

# l = 10, l' = (20, 40), lambda = (3, 1), n = (8, 4), d0 = 1, d1 = 0.
#   delta_1 = 21, sbar_1 = 10;  delta_2 = 20, sbar_2 = (20 + 1 + 40)/2 = 30.5
#   p_2 = 1 / (3 + 1) = 0.25;   n_2/n_1 = 0.5 in (0.25, 1)
#   M^pi = 8 * 20 * 21 + 4 * 40.5 * 20 = 3360 + 3240 = 6600
#   dT = 1 < n_1 / sum lambda = 8/4 = 2
#   theta_2: e^{-4 theta} (0.75 + 0.25 e^theta)^8 = 1  <=>  0.75 + 0.25 u^2 = u, u = e^{theta/2}
#            <=> u^2 - 4u + 3 = 0, u = 3 (u = 1 is theta = 0): theta_2 = 2 ln 3 = 2.19722
#   T = 999, zeta = 1, delta = 0.02, m = 2: ln(2 * (1 + 999) / 0.02) = ln(1e5) = 11.5129
#   buffer = (10 + 20) * (4 + 11.5129 / 2.19722) = 30 * 9.23976 = 277.193
#   memory needed = 6600 + 277.193 = 6877.193
def test_nested_wait_hand():
    nw = th.nested_wait(10, [20, 40], [3, 1], [8, 4], d0=1.0, d1=0.0, horizon=999,
                        zeta=1.0, delta=0.02, capacity=7000)
    assert nw.segment_length == (21.0, 20.0) and nw.segment_mean_stage == (10.0, 30.5)
    assert nw.continue_prob == (1.0, 0.25)
    assert nw.base_memory == 6600.0
    assert nw.rate_ok and nw.ratio_ok == (True,)
    assert nw.theta[0] == pytest.approx(2 * math.log(3), rel=1e-12)
    assert nw.log_term == pytest.approx(math.log(1e5))
    assert nw.buffer[0] == pytest.approx(30 * (4 + math.log(1e5) / (2 * math.log(3))))
    assert nw.memory_needed == pytest.approx(6877.1927, abs=1e-3)
    assert nw.feasible
    small = th.nested_wait(10, [20, 40], [3, 1], [8, 4], d0=1.0, d1=0.0, horizon=999,
                           zeta=1.0, delta=0.02, capacity=6800)
    assert not small.feasible and "memory needed" in small.reason


def test_nested_wait_condition_failures():
    # n_2/n_1 = 1/8 = 0.125 <= p_2 = 0.25: no positive root, memory needed is infinite
    nw = th.nested_wait(10, [20, 40], [3, 1], [8, 1], d0=1.0, d1=0.0, horizon=100)
    assert nw.ratio_ok == (False,) and math.isnan(nw.theta[0])
    assert math.isinf(nw.memory_needed) and not nw.feasible and "segment 2" in nw.reason
    # n_2/n_1 = 1: not < 1
    assert th.nested_wait(10, [20, 40], [3, 1], [8, 8], d0=1, d1=0, horizon=1).ratio_ok == (False,)
    # n_1 / sum lambda = 4/4 = 1 = dT: not strictly below
    nw = th.nested_wait(10, [20, 40], [3, 1], [4, 2], d0=1.0, d1=0.0, horizon=100)
    assert not nw.rate_ok and not nw.feasible and "segment 1" in nw.reason
    with pytest.raises(JaxschedError) as e:
        th.nested_wait(10, [40, 20], [3, 1], [8, 4], d0=1, d1=0, horizon=1)
    assert "strictly increasing" in one_line_error(e)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 400), st.floats(0.01, 0.99), st.floats(0.001, 0.999))
def test_theta_solves_its_equation(n_prev, p, where):
    # pick n_next strictly between p n_prev and n_prev (reals are allowed by the formula)
    n_next = p * n_prev + where * (1 - p) * n_prev
    if not p < n_next / n_prev < 1:
        return
    theta = th.nested_wait_theta(n_prev, n_next, p)
    assert theta > 0
    # log of exp(-theta n_k)(1 - p + p e^theta)^{n_{k-1}} is 0 at the root
    # log(1 - p + p e^theta) = theta + log(p + (1 - p) e^-theta), safe for large theta
    g = -theta * n_next + n_prev * (theta + math.log(p + (1 - p) * math.exp(-theta)))
    assert abs(g) <= 1e-9 * max(1.0, theta * n_next)


def test_theta_errors():
    with pytest.raises(JaxschedError) as e:
        th.nested_wait_theta(8, 1, 0.25)
    assert "p < n_next/n_prev < 1" in one_line_error(e)


def test_nested_wait_thresholds_rule():
    # Lambda = 4, dT* = 1 (d1 = 0): n_1 = ceil(1.1 * 4) = 5;
    # p_2 = 0.25: n_2 = min(ceil(5 * 0.35), 4) = 2, and 2/5 = 0.4 in (0.25, 1); dT = 1 < 5/4.
    assert th.nested_wait_thresholds(10, [20, 40], [3, 1], d0=1.0, d1=0.0) == (5, 2)
    # the synthetic setting of the WAIT paper's earlier version (scaled rates), with d1 > 0
    rates = [0.002, 0.004, 0.008, 0.016]
    n = th.nested_wait_thresholds(10, [20, 40, 80, 160], rates, d0=1.0, d1=0.001)
    nw = th.nested_wait(10, [20, 40, 80, 160], rates, n, d0=1.0, d1=0.001, horizon=1e4)
    assert nw.rate_ok and all(nw.ratio_ok)
    with pytest.raises(JaxschedError) as e:  # d1 S >= 1
        th.nested_wait_thresholds(10, [20, 40, 80, 160], [2, 4, 8, 16], d0=1.0, d1=0.001)
    assert "unstable" in one_line_error(e)


def test_nested_wait_fluid_thresholds_hand():
    # l = 10, l' = (20, 40), lambda = (3, 1), d0 = 1, d1 = 2e-4. Segment memory per prompt per
    # stage: (10 + 10) 21 = 420 and (10 + 30.5) 20 = 810; Lambda = (4, 1); S = 4 * 420 + 810
    # = 2490, d1 S = 0.498, dT* = 1 / 0.502 = 1.99203 -> n = ceil(7.968, 1.992) = (8, 2);
    # M^pi = 8 * 420 + 2 * 810 = 4980, t = 1 + 2e-4 * 4980 = 1.996 -> n = (8, 2) again.
    # Entry cohort: (10 + 20) * 2 = 60, so C = 5040 holds it and 5039 does not.
    fl = th.nested_wait_fluid_thresholds(10, [20, 40], [3, 1], capacity=5040, d0=1.0, d1=2e-4)
    assert fl.thresholds == (8, 2) and fl.segment_rate == (4.0, 1.0)
    assert fl.base_memory == 4980 and fl.entry_memory == 60
    assert fl.iteration_time == pytest.approx(1.996) and fl.feasible
    assert not th.nested_wait_fluid_thresholds(10, [20, 40], [3, 1], capacity=5039, d0=1.0,
                                               d1=2e-4).feasible
    # n_2 / n_1 = p_2 = 1/4 exactly: the edge of the guarantee's interval
    nw = th.nested_wait(10, [20, 40], [3, 1], fl.thresholds, d0=1.0, d1=2e-4, horizon=1e4)
    assert nw.rate_ok and nw.ratio_ok == (False,)
    with pytest.raises(JaxschedError) as e:  # d1 S = 2.49
        th.nested_wait_fluid_thresholds(10, [20, 40], [3, 1], capacity=1e9, d0=1.0, d1=1e-3)
    assert "unstable" in one_line_error(e)


# ------------------------------------------------------------------------------------------
# flow control
# ------------------------------------------------------------------------------------------

# Dong & Cao Sec. 4.1: (l, o) = (10, 20), (10, 40), (10, 60), lambda = 5, C = 16492, b = 4.
#   w = (200 + 210, 400 + 820, 600 + 1830) = (410, 1220, 2430), sum w = 4060
#   sum b w = 4 * 4060 = 16240 < 16492;  sum lambda w = 5 * 4060 = 20300 > 16492
PAPER = dict(prompt_len=[10, 10, 10], output_len=[20, 40, 60])


def test_flow_paper_setting():
    fl = th.flow_load(**PAPER, rate=[5, 5, 5], capacity=16492)
    assert fl.memory_time == (410.0, 1220.0, 2430.0)
    assert fl.load == 20300.0 and fl.slack == -3808.0
    assert not fl.necessary_ok and not fl.sufficient_possible and "Prop. 3.2" in fl.reason
    bc = th.flow_budget_check(**PAPER, budgets=[4, 4, 4], rate=[5, 5, 5], capacity=16492)
    assert bc.peak_bound == 16240.0 and bc.slack == 252.0
    assert bc.memory_ok and bc.rate_ok == (False, False, False) and not bc.sufficient
    # lower rates (lambda = 3 < b = 4): Theorem 3.3 holds
    ok = th.flow_budget_check(**PAPER, budgets=[4, 4, 4], rate=[3, 3, 3], capacity=16492)
    assert ok.sufficient and "Thm 3.3 holds" in ok.reason
    # no rates: only the memory part
    sat = th.flow_budget_check(**PAPER, budgets=[4, 4, 4], capacity=16492)
    assert sat.memory_ok and sat.rate_ok == () and not sat.sufficient


def test_flow_safe_budgets():
    # uniform: 16492 / 4060 = 4.0621 -> 4; proportional: s* = 16492 / 20300 = 0.81241,
    # b = 5 s* = 4.0621 -> 4 each; Alg. 2 with uniform mix: 16492 / (4060/3) = 12.1862
    sb = th.flow_safe_budgets(**PAPER, rate=[5, 5, 5], capacity=16492)
    assert sb.uniform_sup == pytest.approx(16492 / 4060) and sb.uniform_int == 4
    assert sb.uniform_int_peak == 16240.0
    assert sb.scale_sup == pytest.approx(16492 / 20300) and not sb.proportional_exceeds_rates
    assert sb.proportional_int == (4, 4, 4)
    assert sb.global_sup == pytest.approx(3 * 16492 / 4060)
    # C = 16240 exactly: b = 4 gives sum b w = C, not < C -> 3; proportional lowers the
    # largest-w class first: (4, 4, 3) has 16240 - 2430 = 13810 < C
    edge = th.flow_safe_budgets(**PAPER, rate=[5, 5, 5], capacity=16240)
    assert edge.uniform_int == 3 and edge.proportional_int == (4, 4, 3)


def test_flow_overflow_bound_hand():
    # One class, l = 1, o = 2: h(0) = 2, h(1) = 3 (w = 5); B in {0, 1, 2}, mean 1.
    #   E M = 5; ranges r = (2*2, 2*3) = (4, 6), sum r^2 = 52
    #   C = 10: slack 5, bound exp(-2 * 25 / 52) = 0.382304
    b = th.flow_overflow_bound([1], [2], capacity=10, budget_mean=1, budget_max=2, horizon=2)
    assert b.expected_memory == 5.0 and b.variance_proxy == 52.0
    assert b.prob_bound == pytest.approx(math.exp(-50 / 52))
    assert b.horizon_bound == pytest.approx(min(1.0, 2 * math.exp(-50 / 52)))
    assert b.slack_for(b.prob_bound) == pytest.approx(5.0)
    # exact check at C = 7 with B uniform on {0, 1, 2}: M = 2 B_t + 3 B_{t-1} > 7 for
    # (B_t, B_{t-1}) in {(2, 2), (1, 2)}: probability 2/9 <= exp(-2 * 4 / 52) = 0.857
    exact = sum(2 * a + 3 * c > 7 for a, c in itertools.product(range(3), repeat=2)) / 9
    bound = th.flow_overflow_bound([1], [2], capacity=7, budget_mean=1, budget_max=2)
    assert exact == pytest.approx(2 / 9) and exact <= bound.prob_bound
    assert bound.prob_bound == pytest.approx(math.exp(-8 / 52))
    # deterministic budget, one class: no randomness, no overflow below C
    assert th.flow_overflow_bound([1], [2], capacity=10, budget_mean=1, budget_min=1,
                                  budget_max=1).prob_bound == 0.0
    # no slack: trivial bound
    assert th.flow_overflow_bound([1], [2], capacity=5, budget_mean=1,
                                  budget_max=2).prob_bound == 1.0


def test_flow_overflow_bound_monte_carlo():
    # The paper's classes under Alg. 2 with B uniform on {8, ..., 12}: the empirical overflow
    # frequency of the no-eviction memory stays below our bound.
    rng = np.random.default_rng(0)
    l, o = np.array([10, 10, 10]), np.array([20, 40, 60])
    cap = 15500.0
    b = th.flow_overflow_bound(l, o, capacity=cap, budget_mean=10, budget_min=8, budget_max=12)
    assert b.expected_memory == pytest.approx(10 * 4060 / 3)
    slots = 20000
    budgets = rng.integers(8, 13, size=slots)
    mem = np.zeros(slots + 60)
    for t, n in enumerate(budgets):
        for k in rng.integers(0, 3, size=n):
            mem[t:t + o[k]] += l[k] + np.arange(1, o[k] + 1)
    freq = float(np.mean(mem[60:slots] > cap))
    assert 0 < b.prob_bound < 1 and freq <= b.prob_bound


def test_flow_errors():
    with pytest.raises(JaxschedError) as e:
        th.flow_overflow_bound([1], [2], capacity=10, budget_mean=3, budget_max=2)
    assert "budget_min <= budget_mean <= budget_max" in one_line_error(e)
    with pytest.raises(JaxschedError) as e:
        th.flow_budget_check([1, 2], [2, 3], [1], capacity=10)
    assert "budgets has 1 entries" in one_line_error(e)


# ------------------------------------------------------------------------------------------
# congestion
# ------------------------------------------------------------------------------------------


def test_congestion_reported_numbers():
    # M = 2000, l0 = 10, l1 = 40:
    #   x* = 2 * 2000 / (40 * (20 + 40 + 1)) = 4000 / 2440 = 1.6393 -> "1.64"
    #   cycle = 2000 / (40 * 50) = 1.00
    #   ratio = 61 / 100 = 0.61 = 1.00 / 1.6393
    g = th.congestion_homogeneous(2000, 10, 40)
    assert round(g.fixed_point, 2) == 1.64 and g.fixed_point == pytest.approx(4000 / 2440)
    assert round(g.cycle_throughput, 2) == 1.00
    assert g.ratio == pytest.approx(0.61) == g.cycle_throughput / g.fixed_point
    assert g.memory_time == 1220.0 and g.cycle_period == 40
    assert g.cycle_admissions == pytest.approx(2000 / 11)


def _greedy_saturated(m, l0, l1, iters):
    """The congestion paper's dynamics, saturated, one class: stage j holds l0 + 1 + j."""
    count = np.zeros(l1, dtype=np.int64)  # requests at stage j after admission
    stage_mem = l0 + 1 + np.arange(l1)
    done, memory, residents = [], [], []
    for _ in range(iters):
        done.append(count[-1])  # (1) execute: the last stage completes, the rest advance
        count = np.concatenate([[0], count[:-1]])
        excess = int(count @ stage_mem) - m  # (3) evict least-progressed first
        for j in range(l1):
            if excess <= 0:
                break
            k = min(count[j], -(-excess // stage_mem[j]))
            count[j] -= k
            excess -= k * stage_mem[j]
        count[0] += (m - int(count @ stage_mem)) // (l0 + 1)  # (4) admit greedily
        memory.append(int(count @ stage_mem))
        residents.append(int(count.sum()))
    return np.array(done), np.array(memory, float), np.array(residents, float)


def test_greedy_simulation_reaches_the_worst_cycle():
    done, memory, residents = _greedy_saturated(2000, 10, 40, 2000)
    thr = done[400:].mean()
    assert thr == pytest.approx(1.0, abs=0.05) and thr < 1.64
    # residents swing between the cohort M/(l0+1) = 181 and M/(l0+l1) = 40 every l1 = 40
    osc = th.detect_oscillation(residents, warmup=400)
    assert osc.oscillating and osc.period == pytest.approx(40, abs=0.5)
    assert osc.amplitude == pytest.approx(181 - 40, abs=5)
    # memory after admission stays within l0 + 1 of M: periodic, but too flat to count
    flat = th.detect_oscillation(memory, warmup=400)
    assert memory[400:].min() > 2000 - 11
    assert flat.period == pytest.approx(40, abs=0.5) and not flat.oscillating


def test_congestion_heterogeneous():
    # M = 2000; (l0, l1) = (10, 40), (10, 20); shares 1:1 -> 0.5, 0.5
    #   C = (40 * 30.5, 20 * 20.5) = (1220, 410); sum p C = 815; x* = 2000/815 = 2.45399
    #   gcd(40, 20) = 20 -> 19 unstable modes
    h = th.congestion_heterogeneous(2000, [10, 10], [40, 20], [1, 1])
    assert h.memory_time == (1220.0, 410.0) and h.share == (0.5, 0.5)
    assert h.fixed_point == pytest.approx(2000 / 815)
    assert sum(h.class_admissions) == pytest.approx(h.fixed_point)
    assert h.gcd.gcd == 20 and h.gcd.unstable_modes == 19 and not h.gcd.stable_predicted
    # one class reduces to the homogeneous fixed point
    assert th.congestion_heterogeneous(2000, [10], [40]).fixed_point == pytest.approx(4000 / 2440)


def test_decode_gcd():
    assert th.decode_gcd([128, 256, 512]).gcd == 128
    g = th.decode_gcd([5, 6, 10, 12])  # the SGLang mix {5,10} + {6,12}
    assert g.gcd == 1 and g.stable_predicted and g.unstable_modes == 0
    assert th.decode_gcd([6, 12, 12]).lengths == (6, 12)
    with pytest.raises(JaxschedError) as e:
        th.decode_gcd([1.5, 3])
    assert "integers" in one_line_error(e)


def test_coprime_suggestions():
    s = th.coprime_decode_lengths([512, 128, 256])
    # one decrement suffices; the longest length changes (smallest relative change)
    assert s.original == (128, 256, 512) and s.suggested == (128, 256, 511)
    assert s.gcd_before == 128 and s.gcd_after == 1 and s.total_change == 1
    # {6, 10}: single decrements give (5, 10) gcd 5, (6, 9) gcd 3, so two are needed: (5, 9)
    assert th.coprime_decode_lengths([6, 10]).suggested == (5, 9)
    p = th.coprime_decode_lengths([128, 256, 512], mode="pairwise")
    assert p.suggested == (128, 255, 511) and p.total_change == 2
    assert all(math.gcd(a, b) == 1 for a, b in itertools.combinations(p.suggested, 2))
    # the paper's own suggestion is pairwise coprime too
    assert all(math.gcd(a, b) == 1 for a, b in itertools.combinations((127, 255, 509), 2))
    assert th.coprime_decode_lengths([5, 6]).suggested == (5, 6)  # already coprime
    with pytest.raises(JaxschedError):
        th.coprime_decode_lengths([4, 8], mode="nope")


# ------------------------------------------------------------------------------------------
# oscillation detector
# ------------------------------------------------------------------------------------------

T = np.arange(3000)


@pytest.mark.parametrize("period", [12.0, 37.5, 80.0])
def test_detects_noisy_sine(period):
    rng = np.random.default_rng(1)
    trace = 1000 + 100 * np.sin(2 * np.pi * T / period) + rng.normal(0, 20, T.size)
    o = th.detect_oscillation(trace, warmup=100)
    assert o.oscillating
    assert o.period == pytest.approx(period, abs=0.5)
    assert o.amplitude == pytest.approx(200, rel=0.1)  # peak-to-trough 2 * 100
    assert o.relative_amplitude == pytest.approx(0.2, rel=0.1)
    assert 0.8 < o.strength <= 1  # variance 5000 / (5000 + 400) = 0.93


def test_detects_sawtooth_with_trend():
    rng = np.random.default_rng(2)
    trace = 500 + 0.05 * T + 8.0 * (T % 40) + rng.normal(0, 10, T.size)  # 0..312 ramp, period 40
    o = th.detect_oscillation(trace)
    assert o.oscillating and o.period == pytest.approx(40, abs=0.5)
    assert o.amplitude == pytest.approx(312, rel=0.1)


def test_not_oscillating():
    rng = np.random.default_rng(3)
    noisy = th.detect_oscillation(1000 + rng.normal(0, 50, T.size))
    assert not noisy.oscillating and noisy.strength < 0.5
    flat = th.detect_oscillation(np.full(500, 1234.0))
    assert not flat.oscillating and flat.amplitude == 0 and flat.strength == 0
    # a random walk wanders in slow swings; no period repeats four times
    walk = th.detect_oscillation(1000 + np.cumsum(rng.normal(0, 10, T.size)))
    assert not walk.oscillating
    ramp = th.detect_oscillation(np.linspace(0, 100, 500))  # trend only
    assert not ramp.oscillating
    # a tiny periodic ripple (0.1% of the mean) is below the amplitude threshold
    ripple = th.detect_oscillation(10000 + 5 * np.sin(2 * np.pi * T / 25))
    assert ripple.strength > 0.9 and not ripple.oscillating


def test_oscillation_errors():
    with pytest.raises(JaxschedError) as e:
        th.detect_oscillation([1.0, 2.0, 3.0])
    assert "samples" in one_line_error(e)
    with pytest.raises(JaxschedError):
        th.detect_oscillation([1.0, float("nan")] * 10)


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _rows(rows):
    return {(r.section, r.quantity): r for r in rows}


def test_report_paper_setting():
    rows = th.theory_report([10, 10, 10], [20, 40, 60], [5, 5, 5], capacity=16492,
                            budgets=[4, 4, 4], global_budget=12)
    assert all(isinstance(r, th.ReportRow) and len(r) == 4 for r in rows)
    r = _rows(rows)
    assert r["flow_control", "w_k"].value == (410.0, 1220.0, 2430.0)
    assert r["flow_control", "load sum lambda_k w_k"].value == 20300.0
    assert r["flow_control", "peak bound sum b_k w_k"].value == 16240.0
    assert r["flow_control", "necessary condition"].value is False
    assert r["congestion", "gcd of decode lengths"].value == 20
    assert r["congestion", "coprime suggestion"].value == (20, 39, 59)
    assert {row.section for row in rows} >= {"wait", "nested_wait", "flow_control", "congestion"}


def test_report_nested_wait_fluid_thresholds():
    """wait-high's numbers (see test_nested_fit_falls_back_to_the_fluid_thresholds)."""
    rows = _rows(th.theory_report([20] * 3, [100, 200, 300], [42.1, 28.1, 14.0],
                                  capacity=136490, d0=0.0276, d1=3.5e-7))
    assert rows["nested_wait", "fluid thresholds"].value == (6, 3, 1)
    assert rows["nested_wait", "fluid feasible"].value is True
    assert "121200 <= C" in rows["nested_wait", "fluid feasible"].note


def test_report_homogeneous_saturated_and_trace():
    _, _, trace = _greedy_saturated(2000, 10, 40, 800)
    rows = th.theory_report([10], [40], None, capacity=2000, memory_trace=trace, warmup=200)
    r = _rows(rows)
    assert r["wait", "fluid model"].value is None
    assert r["congestion", "worst-cycle throughput"].value == pytest.approx(1.0)
    assert r["congestion", "x* (saturated greedy)"].value == pytest.approx(1.639344, rel=1e-6)
    assert r["oscillation", "oscillating"].value is True


def test_report_unslotted_converts_rates():
    # d1 = 0.01 two-type example: dT* = 1/0.47, so rates per iteration are lambda / 0.47
    rows = th.theory_report([2, 4], [2, 3], [1, 2], capacity=150, d0=1.0, d1=0.01,
                            slotted=False)
    r = _rows(rows)
    assert r["flow_control", "rates per iteration"].value == pytest.approx((1 / 0.47, 2 / 0.47),
                                                                           rel=1e-5)
    assert r["wait", "minimal thresholds n_j"].value == (3, 5)
    assert r["nested_wait", "analysis"].value is None  # prompts differ


def test_report_input_errors():
    with pytest.raises(JaxschedError) as e:
        th.theory_report([10, 10], [20], None, capacity=100)
    assert one_line_error(e).startswith("theory_report:")
