"""What a trial's Tune config holds, and the TrialConfig it stands for: light enough for the sweep's planning code.

A planned trial's Tune config is its name and the settings that set it apart from the other trials of its group;
the group's shared settings travel once, with the trainable (`shared`), so Tune's saved state per trial does not
carry thirty settings five times over. A searched point's config is the point plus its group's constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ap_core.config import TrialConfig

# Tune's Repeater numbers the repeats of one searched point 0, 1, ...: they are the point's seeds 1, 2, ...
REPEAT_INDEX = "__trial_index__"
# A planned trial's name, handed out with its settings (tune_runner.PlanSearcher): data, not a setting.
TRIAL_NAME = "trial_name"
# The stored cycles a trial starts from (trainables.shared_cycles.Reuse as a dict): data, not a setting.
REUSE = "reuse"
NOT_SETTINGS = (REPEAT_INDEX, TRIAL_NAME, REUSE)


def trial_config(
    config: Mapping[str, Any], runtime: Mapping[str, Any] | None = None, shared: Mapping[str, Any] | None = None
) -> TrialConfig:
    """The TrialConfig of a Tune config, over its group's `shared` settings (plus the sweep's runtime settings)."""
    values = {**(shared or {}), **{k: v for k, v in config.items() if k not in NOT_SETTINGS}}
    if REPEAT_INDEX in config:
        values["seed"] = int(config[REPEAT_INDEX]) + 1
    return TrialConfig.from_dict({**values, **(runtime or {})})
