"""One PAPA update, run under torchrun by tests/test_distributed.py: rank 0 saves the weights after it.

torchrun --standalone --nproc_per_node=2 tests/scripts/dist_update.py MODEL K[,K...] OUT

writes OUT-K.safetensors (and its gradients) for each K.
"""

import sys

import numpy as np
import torch

from papa_env import distributed
from papa_env.agents.papa import PAPA, PAPAConfig
from papa_env.models import load_model, save_model


def update(model: str, k: int) -> PAPA:
    """One optimizer step on 4 queries, every process computing its share of the rows: PAPA's full timestep sum
    (k = 0) or EPAPA's (k > 0). The summed gradients stay on the parameters."""
    torch.set_num_threads(1)
    agent = PAPA(load_model(model), PAPAConfig(k=k, timesteps_per_image=None, batch_size=4, lr=1e-3, model_coef=0.5))
    queries = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)).numpy() * 2 - 1
    agent.learn(queries, np.array([1, -1, 1, 0]))
    return agent


if __name__ == "__main__":
    distributed.init("cpu")
    for k in sys.argv[2].split(","):
        agent = update(sys.argv[1], int(k))
        if distributed.world()[0] == 0:
            out = f"{sys.argv[3]}-{k}.safetensors"
            save_model(agent.unet, out)
            torch.save([p.grad for p in agent.unet.parameters()], out + ".grads")  # the test's own file
