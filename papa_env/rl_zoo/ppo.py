"""rl-zoo3 PPO hyperparameters for the noise ids: ``-conf papa_env.rl_zoo.ppo`` (see :mod:`papa_env.rl_zoo`)."""

from papa_env.rl_zoo import PPO, for_every_id

hyperparams = for_every_id(PPO)
