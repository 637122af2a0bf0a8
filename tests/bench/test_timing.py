"""The timing harness: warmups first, then windows round robin; a capped case stops early."""

from pretrain.bench import timing


def test_measure_is_round_robin_and_caps_slow_cases():
  calls = []

  def case(label, **kwargs):
    return timing.Case(label, lambda n: calls.append((label, n)), lambda t: t, **kwargs)

  fast, capped = (
    case("fast", steps=3, warmup=1),
    case("capped", steps=50, warmup=1, max_seconds=0.0),
  )
  timings = timing.measure([fast, capped], windows=3, pause=0.0)
  assert calls[:2] == [("fast", 1), ("capped", 1)]  # Warmups first.
  assert calls[2:] == [("fast", 3), ("capped", 1), ("fast", 3), ("fast", 3)]
  assert len(timings[0].window_step_seconds) == 3 and timings[0].steps_per_window == 3
  assert len(timings[1].window_step_seconds) == 1 and timings[1].steps_per_window == 1
