"""Reference points for benchmarks (not learners).

* :class:`BaseModel`: the pretrained model, untouched (the floor every agent starts from).
* :class:`OracleBestOfN`: best-of-N filtering of base samples by the user's *true* utility, read through the
  env's privileged access. **Not a legal agent**: it looks at what agents may not. It is the ceiling of
  what re-ranking base samples can give.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from papa_env.diffusion import sample


class BaseModel:
    """Queries and evaluation samples from the base model; learns nothing."""

    name = "base"

    def __init__(self, unet: torch.nn.Module, queries_per_step: int = 10, num_sampling_steps: int = 20) -> None:
        self.unet = unet.eval()
        self.k, self.steps = queries_per_step, num_sampling_steps

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample(self.unet, n, num_steps=self.steps, generator=generator)

    def propose(self, generator: torch.Generator) -> np.ndarray:
        return self.generate(self.k, generator).numpy()

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class OracleBestOfN(BaseModel):
    """NOT A LEGAL AGENT: keeps the best 1 of ``n_candidates`` base samples by the user's privileged utility."""

    name = "oracle-best-of-n"

    def __init__(self, unet: torch.nn.Module, env, n_candidates: int = 8, **kwargs: Any) -> None:
        super().__init__(unet, **kwargs)
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        self.privileged = env.unwrapped.privileged
        self.n_candidates = n_candidates

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        candidates = sample(self.unet, n * self.n_candidates, num_steps=self.steps, generator=generator)
        utility = torch.from_numpy(self.privileged.utility(candidates)).view(n, self.n_candidates)
        best = utility.argmax(1)
        return candidates.view(n, self.n_candidates, *candidates.shape[1:])[torch.arange(n), best]
