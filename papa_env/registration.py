"""Every environment id papa-env registers, in one place (run on ``import papa_env``).

Gymnasium 1.x has no entry-point plugins, so importing ``papa_env`` is what makes ``gym.make`` find them.
"""

from __future__ import annotations

import gymnasium as gym

ENTRY_POINT = "papa_env.env:PreferenceEnv"
NOISE_ENTRY_POINT = "papa_env.noise_env:make_noise_env"

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
"""The image-action ids: the action is the K query images themselves, for agents that own a generative model."""

NOISE_ENV_IDS = {
    # the same users for RL clients (SB3, rl-zoo3): the action is the base model's initial noise, decoded by it;
    # a flat Box observation (budget left, last replies) for MlpPolicy. papa_env.noise_env, papa_env.rl_zoo
    "PAPA-MNIST-Noise-v0": dict(oracle="classifier", dataset="mnist"),
    "PAPA-FashionMNIST-Noise-v0": dict(oracle="classifier", dataset="fashion-mnist"),
    "PAPA-MNIST-Style-Noise-v0": dict(oracle="style", dataset="mnist"),
}


def register_envs() -> None:
    for ids, entry_point in ((ENV_IDS, ENTRY_POINT), (NOISE_ENV_IDS, NOISE_ENTRY_POINT)):
        for env_id, kwargs in ids.items():
            if env_id not in gym.registry:
                # order_enforce=False: the env raises its own ResetNeededError (a gymnasium ResetNeeded too)
                gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, order_enforce=False)
