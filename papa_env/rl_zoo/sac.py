"""rl-zoo3 SAC hyperparameters for the noise ids: ``-conf papa_env.rl_zoo.sac`` (see :mod:`papa_env.rl_zoo`)."""

from papa_env.rl_zoo import SAC, for_every_id

hyperparams = for_every_id(SAC)
