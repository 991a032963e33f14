"""Every environment id papa-env registers, in one place (run on ``import papa_env``).

Gymnasium 1.x has no entry-point plugins, so importing ``papa_env`` is what makes ``gym.make`` find them.
"""

from __future__ import annotations

import gymnasium as gym

ENTRY_POINT = "papa_env.env:PreferenceEnv"

ENV_IDS = {
    # classifier user who likes digits {1, 4, 7, 9} (the PAPA authors' default); any set via preference=
    "PAPA-MNIST-v0": dict(oracle="classifier", dataset="mnist"),
    # classifier user who likes footwear: sandal, sneaker, ankle boot (classes 5, 7, 9; the authors' default)
    "PAPA-FashionMNIST-v0": dict(oracle="classifier", dataset="fashion-mnist"),
    # fine-grained user: thick strokes (also thin, slanted-right/-left, large, small), base like-rate 0.4
    "PAPA-MNIST-Style-v0": dict(oracle="style", dataset="mnist"),
    # CLIP user: "a thick handwritten digit" over "a thin handwritten digit" (needs papa-env[clip] + weights)
    "PAPA-MNIST-CLIP-v0": dict(oracle="clip", dataset="mnist"),
}


def register_envs() -> None:
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gym.registry:
            # order_enforce=False: the env raises its own ResetNeededError (a gymnasium ResetNeeded too)
            gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs=kwargs, order_enforce=False)
