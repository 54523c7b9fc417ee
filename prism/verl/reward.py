"""The RLVR reward as verl calls it: `reward.custom_reward_function.path=pkg://prism.verl.reward`.

verl's reward managers call `compute_score(data_source, solution_str, ground_truth, extra_info, **kw)`;
the returned dict's keys are logged, and `acc` feeds DAPO's group filter (integration-reference §2.1).
"""

from __future__ import annotations

from prism.core import reward


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    accuracy_weight: float = 0.8,
    format_weight: float = 0.2,
    **_: object,
) -> dict:
    # preparation copies the row's reward_model.equivalent_answers here: verl passes a custom reward
    # function extra_info, not reward_model
    equivalents = tuple((extra_info or {}).get("equivalent_answers") or ())
    return reward.compute_score(solution_str, ground_truth, accuracy_weight, format_weight, equivalents)
