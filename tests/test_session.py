"""papa_env/session.py: the loop persists before learning, resumes exactly, refuses other settings, any agent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ToyEval, bright_env

from papa_env import evaluation
from papa_env.agents.ddpo import DDPO, DDPOConfig
from papa_env.agents.papa import PAPA, PAPAConfig
from papa_env.checkpoint import load_state
from papa_env.errors import RunMismatchError
from papa_env.session import Agent, run_session


def _agent(tiny_unet, **kw) -> PAPA:
    cfg = PAPAConfig(lr=3e-3, batch_size=10, timesteps_per_image=16, num_sampling_steps=8, **kw)
    return PAPA(tiny_unet, cfg)


def _replies(run) -> list:
    return [json.loads(line)["replies"] for line in (run / "replies.jsonl").read_text().splitlines()]


def test_agents_satisfy_the_protocol_without_inheriting_it(tiny_unet) -> None:
    assert isinstance(_agent(tiny_unet), Agent) and isinstance(DDPO(tiny_unet), Agent)
    assert not isinstance(object(), Agent)


def test_resume_after_interruption_reproduces_the_run(tiny_unet, tmp_path) -> None:
    straight = tmp_path / "straight"
    run_session(_agent(tiny_unet), bright_env(60), straight, eval_every=0, progress=False)
    interrupted = tmp_path / "interrupted"
    run_session(_agent(tiny_unet), bright_env(60), interrupted, eval_every=0, progress=False, stop_after_steps=2)
    # a kill after the step-3 replies were persisted but before the agent learned from them:
    lines = (straight / "replies.jsonl").read_text().splitlines()
    (interrupted / "replies.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (interrupted / "queries" / "step_0003.npz").write_bytes((straight / "queries" / "step_0003.npz").read_bytes())
    run_session(_agent(tiny_unet), bright_env(60), interrupted, eval_every=0, progress=False)
    assert _replies(straight) == _replies(interrupted) and len(_replies(straight)) == 6
    a = load_state(straight / "checkpoint.safetensors")["agent"]["unet"]
    b = load_state(interrupted / "checkpoint.safetensors")["agent"]["unet"]
    assert all(torch.equal(a[key], b[key]) for key in a)  # bit for bit (the tests run on few threads)
    assert (straight / "model.safetensors").read_bytes() == (interrupted / "model.safetensors").read_bytes()


def test_resuming_with_other_settings_is_refused_before_touching_the_folder(tiny_unet, tmp_path) -> None:
    run = tmp_path / "run"
    run_session(_agent(tiny_unet), bright_env(60), run, eval_every=0, progress=False, stop_after_steps=2)

    def files() -> dict:
        return {f.relative_to(run): f.read_bytes() for f in run.rglob("*") if f.is_file()}

    before = files()
    cases = [
        (dict(agent=_agent(tiny_unet, pref_coef=0.2)), r"agent_config.pref_coef: 0.1 -> 0.2.*new run folder"),
        (dict(env=bright_env(50)), r"feedback_budget: 60 -> 50"),
        (dict(env=bright_env(60, threshold=0.1)), r"oracle: "),
        (dict(env=bright_env(60, mistake_rate=0.3)), r'oracle: "Bright.*-> "Mistakes.*eps=0.3'),
        (dict(env=bright_env(60, skip_margin=0.2)), r"oracle: "),
        (dict(seed=1), r"seed: 0 -> 1"),
        (dict(eval_every=20, evaluator=ToyEval(bright_env(60))), r"eval_every: 0 -> 20"),
    ]
    for kwargs, match in cases:
        call = dict(agent=_agent(tiny_unet), env=bright_env(60), eval_every=0, progress=False) | kwargs
        with pytest.raises(RunMismatchError, match=match):
            run_session(run_dir=run, **call)
    assert files() == before  # nothing was touched
    # a folder started before a config field existed resumes if the field holds its default
    config = json.loads((run / "config.json").read_text())
    del config["agent_config"]["base_queries"]
    (run / "config.json").write_text(json.dumps(config))
    records = run_session(_agent(tiny_unet), bright_env(60), run, eval_every=0, progress=False)
    assert len(_replies(run)) == 6 and records == []
    with pytest.raises(RunMismatchError, match="base_queries: 0 -> 2"):
        run_session(_agent(tiny_unet, base_queries=2), bright_env(60), run, eval_every=0, progress=False)


def test_a_folder_without_a_reply_is_started_again_with_the_settings_given(tiny_unet, tmp_path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"\(4, 1, 28, 28\)"):  # an agent of 10 queries in an env of 4: the env says
        run_session(_agent(tiny_unet), bright_env(60, k=4), run, eval_every=20, evaluator=ToyEval(bright_env(60, k=4)),
                    progress=False)  # fmt: skip
    assert (run / "config.json").exists() and not (run / "replies.jsonl").exists()  # evaluated, nothing asked
    with pytest.warns(UserWarning, match="holds no reply yet: started again.*queries_per_step: 10 -> 4"):
        records = run_session(_agent(tiny_unet, queries_per_step=4), bright_env(60, k=4), run, eval_every=20,
                              evaluator=ToyEval(bright_env(60, k=4)), progress=False, stop_after_steps=5)  # fmt: skip
    assert json.loads((run / "config.json").read_text())["agent_config"]["queries_per_step"] == 4
    assert [r["replies"] for r in records] == [0, 20] and len(_replies(run)) == 5
    fresh = tmp_path / "fresh"  # the same as a session started in a new folder
    same = run_session(_agent(tiny_unet, queries_per_step=4), bright_env(60, k=4), fresh, eval_every=20,
                       evaluator=ToyEval(bright_env(60, k=4)), progress=False, stop_after_steps=5)  # fmt: skip
    assert _replies(fresh) == _replies(run) and [r["eval/like_rate_oracle"] for r in same] == [
        r["eval/like_rate_oracle"] for r in records
    ]
    with pytest.raises(RunMismatchError, match="queries_per_step: 4 -> 10"):  # once a reply is in, never again
        run_session(_agent(tiny_unet), bright_env(60, k=4), run, eval_every=20, evaluator=ToyEval(bright_env(60, k=4)),
                    progress=False)  # fmt: skip


def test_a_model_of_another_data_set_than_the_envs_is_warned_about(tiny_unet, tmp_path) -> None:
    import warnings

    from papa_env.models import load_model, save_model, trained_on

    save_model(tiny_unet, tmp_path / "base.safetensors", dataset="mnist")
    save_model(tiny_unet, tmp_path / "tuned.safetensors", agent="epapa", base_model="fashion-mnist-ddpm")
    base, tuned = load_model(tmp_path / "base.safetensors"), load_model(tmp_path / "tuned.safetensors")
    assert (trained_on(base), trained_on(tuned), trained_on(tiny_unet)) == ("mnist", "fashion-mnist", None)
    for model, dataset in [(base, "fashion-mnist"), (tuned, "mnist")]:
        with pytest.warns(UserWarning, match=f"trained on '{trained_on(model)}'.*judge '{dataset}'"):
            run_session(_agent(model), bright_env(20, dataset=dataset), eval_every=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching data set, or a model that does not say: silent
        for model, dataset in [(base, "mnist"), (tuned, "fashion-mnist"), (tiny_unet, "fashion-mnist")]:
            run_session(_agent(model), bright_env(20, dataset=dataset), eval_every=0, progress=False)


class _KilledAt(ToyEval):
    """An evaluator whose ``n``-th call dies (as a kill would) after the update before it was checkpointed."""

    def __init__(self, env, n: int) -> None:
        super().__init__(env)
        self.calls, self.kill_at = 0, n

    def __call__(self, agent):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return super().__call__(agent)


def test_a_run_killed_during_an_evaluation_redoes_it_on_resume(tiny_unet, tmp_path) -> None:
    straight = run_session(_agent(tiny_unet), bright_env(60), tmp_path / "a", eval_every=20,
                           evaluator=ToyEval(bright_env(60)), progress=False)  # fmt: skip
    assert [r["replies"] for r in straight] == [0, 20, 40, 60]
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):  # the evaluation at 40 replies dies
        run_session(_agent(tiny_unet), bright_env(60), run, eval_every=20,
                    evaluator=_KilledAt(bright_env(60), 3), progress=False)  # fmt: skip
    resumed = run_session(_agent(tiny_unet), bright_env(60), run, eval_every=20,
                          evaluator=ToyEval(bright_env(60)), progress=False)  # fmt: skip
    assert [r["replies"] for r in resumed] == [0, 20, 40, 60]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["replies"] for r in lines] == [0, 20, 40, 60]  # the lost one logged once, late, in order
    for a, b in zip(straight, resumed):
        assert a["eval/like_rate_oracle"] == b["eval/like_rate_oracle"]  # the same run, evaluated late
    # a finished run read again evaluates nothing more
    again = run_session(_agent(tiny_unet), bright_env(60), run, eval_every=20,
                        evaluator=_KilledAt(bright_env(60), 1), progress=False)  # fmt: skip
    assert again == resumed


class _StepPerLike:
    """PAPA whose update reports one optimizer step per like: a compute count that varies between interactions."""

    def __init__(self, agent: PAPA) -> None:
        self.agent = agent

    def __getattr__(self, name: str):
        return getattr(self.agent, name)

    def learn(self, queries, replies) -> dict:
        return {**self.agent.learn(queries, replies), "compute/updates": float((np.asarray(replies) == 1).sum())}


def test_records_hold_the_compute_per_interaction_since_the_last_evaluation_also_across_a_resume(
    tiny_unet, tmp_path
) -> None:
    def run(folder, **kw):
        env = bright_env(60, threshold=-0.08)  # about the median brightness of the tiny UNet's samples
        return run_session(_StepPerLike(_agent(tiny_unet)), env, folder, eval_every=20, evaluator=ToyEval(env),
                           progress=False, **kw)  # fmt: skip

    straight = run(tmp_path / "a")
    likes = (np.array(_replies(tmp_path / "a")) == 1).sum(1)  # per interaction (10 replies each)
    assert likes.sum() > 0 and len(set(likes.tolist())) > 1  # the count varies: a mean differs from the last one
    assert [r.get("compute/updates") for r in straight] == [None, *(likes.reshape(3, 2).mean(1)).tolist()]
    assert all(r["compute/rows"] == 160 for r in straight[1:])  # 10 queries x 16 timesteps, one step each
    assert evaluation.per_interaction(straight, "compute/updates") == round(likes.mean(), 2)  # the session's
    run(tmp_path / "b", stop_after_steps=3)  # killed in the middle of the second window

    def untimed(records):
        return [{k: v for k, v in r.items() if not k.startswith("charts/seconds")} for r in records]

    assert untimed(run(tmp_path / "b")) == untimed(straight)


def test_in_session_like_rate_is_the_liked_share_of_everything_shown(tiny_unet, tmp_path) -> None:
    records = run_session(_agent(tiny_unet), bright_env(40), tmp_path, eval_every=20,
                          evaluator=ToyEval(bright_env(40)), progress=False)  # fmt: skip
    replies = np.array(_replies(tmp_path))
    assert "session/shown_like_rate" not in records[0]  # nothing shown yet
    assert records[1]["session/shown_like_rate"] == pytest.approx((replies[:2] == 1).mean())
    assert records[2]["session/shown_like_rate"] == pytest.approx((replies == 1).mean())


def test_a_session_persists_the_proposal_a_resume_needs(tiny_unet, tmp_path) -> None:
    """Each reply batch's npz carries the sampled trajectory, so a resume can learn a persisted batch."""
    cfg = DDPOConfig(queries_per_step=2, num_sampling_steps=3, lr=1e-3)
    run_session(DDPO(tiny_unet, cfg), bright_env(4, k=2), tmp_path, eval_every=0, progress=False, stop_after_steps=1)
    data = np.load(tmp_path / "queries" / "step_0001.npz")
    state = {k.removeprefix("proposal/"): data[k] for k in data.files if k.startswith("proposal/")}
    assert state, data.files
    DDPO(tiny_unet, cfg).restore_proposal(state)  # what a resume does with a persisted, unlearned batch


def test_bad_eval_every_is_refused(tiny_unet) -> None:
    with pytest.raises(ValueError, match="eval_every"):
        run_session(_agent(tiny_unet), bright_env(20), eval_every=-5, progress=False)


class _Announced:
    """Wraps an env's user: records what was announced and when (before or after the agent's update)."""

    def __init__(self, user, agent) -> None:
        self.user, self.agent, self.log, self.asked = user, agent, [], []

    def __getattr__(self, name):
        return getattr(self.user, name)

    def announce(self, images) -> None:
        self.log.append((images.clone(), self.agent.updates))

    def reply(self, images, rng):
        self.asked.append(self.agent.proposals)  # how many rounds the agent had drawn when this one was asked
        return self.user.reply(images, rng)


@pytest.mark.parametrize("kind", ["papa", "ddpo", "papa-fewer-base-queries"])
def test_lookahead_announces_the_next_queries_before_the_update_and_resumes_exactly(kind, tiny_unet, tmp_path) -> None:
    def make():
        if kind == "ddpo":
            return DDPO(tiny_unet, DDPOConfig(queries_per_step=10, num_sampling_steps=3, lr=1e-3))
        if kind == "papa-fewer-base-queries":  # which model drew each query is part of the persisted proposal
            return _agent(tiny_unet, reply_baseline=50, base_queries=5, fewer_base_queries=True)
        return _agent(tiny_unet)

    # with fewer_base_queries, a user who likes every image: the base-model queries fall to 1 from the second step
    threshold = -1.0 if kind == "papa-fewer-base-queries" else 0.0

    def env_for(agent):
        env = bright_env(60, threshold)
        env.oracle = _Announced(env.oracle, _Counting(agent))
        return env

    straight = tmp_path / "straight"
    agent = make()
    env = env_for(agent)
    run_session(agent, env, straight, eval_every=0, progress=False, lookahead=True)
    log = env.oracle.log
    asked = np.stack([np.load(straight / "queries" / f"step_{i:04d}.npz")["queries"] for i in range(1, 7)])
    # every step was announced: the first at once, steps 2-6 each before the update on the step before it (one
    # update stale); each was drawn while the user answered the step before it, then asked
    assert len(log) == 6 and [n for _, n in log] == [0, 0, 1, 2, 3, 4]
    assert all(torch.equal(images, torch.from_numpy(q)) for (images, _), q in zip(log, asked))
    assert env.oracle.asked == [2, 3, 4, 5, 6, 6]
    # killed after step 3's replies were persisted, before the update (and the proposal of step 4) was checkpointed
    interrupted = tmp_path / "interrupted"
    run_session(
        make(), bright_env(60, threshold), interrupted, eval_every=0, progress=False, stop_after_steps=2, lookahead=True
    )
    lines = (straight / "replies.jsonl").read_text().splitlines()
    (interrupted / "replies.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (interrupted / "queries" / "step_0003.npz").write_bytes((straight / "queries" / "step_0003.npz").read_bytes())
    run_session(make(), bright_env(60, threshold), interrupted, eval_every=0, progress=False, lookahead=True)
    assert _replies(straight) == _replies(interrupted)
    a = load_state(straight / "checkpoint.safetensors")["agent"]
    b = load_state(interrupted / "checkpoint.safetensors")["agent"]
    key = "unet" if "unet" in a else next(k for k in a if isinstance(a[k], dict))
    assert all(torch.equal(a[key][n], b[key][n]) for n in a[key])
    if kind == "papa-fewer-base-queries":
        sources = [np.load(straight / "queries" / f"step_{i:04d}.npz")["proposal/source"] for i in range(1, 7)]
        assert [int(s.sum()) for s in sources] == [5, 5, 1, 1, 1, 1]  # step 2 was drawn before step 1's update
        assert torch.equal(a["tuned_y"], b["tuned_y"])
    # a resume that changes lookahead is refused (the queries differ)
    with pytest.raises(RunMismatchError, match="lookahead"):
        run_session(make(), bright_env(60, threshold), straight, eval_every=0, progress=False)


class _Counting:
    """How many updates an agent has made (its ``learn`` calls), read when the next queries are announced."""

    def __init__(self, agent) -> None:
        self.updates = self.proposals = 0
        learn, propose = agent.learn, agent.propose

        def counted(queries, replies):
            self.updates += 1
            return learn(queries, replies)

        def proposed(generator):
            self.proposals += 1
            return propose(generator)

        agent.learn, agent.propose = counted, proposed
